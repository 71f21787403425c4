"""`ServeWorkload` and latency targets: what a serving deployment must handle, and how fast."""

from __future__ import annotations

import math
import re
from pathlib import Path

from pydantic import Field, model_validator

from meshplan.errors import PlanError
from meshplan.specs.base import Frozen


class ServeWorkload(Frozen):
    """Requests of fixed (or spread) prompt and output lengths, offered closed-loop or at a rate."""

    isl: int = Field(gt=0)
    """Mean prompt (input) length, tokens."""
    osl: int = Field(gt=0)
    """Mean output length, tokens."""
    concurrency: int | None = Field(default=None, gt=0)
    """Closed loop: requests in flight over the whole deployment (a new one starts when one ends)."""
    request_rate: float | None = Field(default=None, gt=0)
    """Open loop: Poisson arrivals, requests/s over the whole deployment; math.inf = all requests at once."""
    prefix_hit: float = Field(default=0.0, ge=0, lt=1)
    """Fraction of prompt tokens found in the prefix cache (not recomputed)."""
    length_cv: float = Field(default=0.0, ge=0, le=2)
    """Coefficient of variation of prompt and output lengths (0: fixed lengths), used by the simulation."""
    num_requests: int = Field(default=2000, gt=0)
    """Requests in a simulated benchmark run (matters for offline runs, whose TTFT grows with it)."""
    warmup_requests: int = Field(default=0, ge=0)
    """Requests sent before the measured ones, in the same loop (a benchmark's warm-up: genai-perf and aiperf
    `--warmup-request-count`); a closed loop's synchronised first wave is measured only where the warm-up is
    shorter than the concurrency."""
    isl_histogram: tuple[tuple[int, float], ...] = ()
    """Prompt lengths as (tokens, weight) pairs; the simulation samples them (isl holds their mean)."""
    osl_histogram: tuple[tuple[int, float], ...] = ()
    """Output lengths as (tokens, weight) pairs (osl holds their mean)."""
    trace: tuple[tuple[float, int, int], ...] = ()
    """Replayed requests (arrival s, prompt tokens, output tokens), sorted by arrival; the simulation replays
    them (request_rate, isl and osl hold their rate and means)."""

    @model_validator(mode="after")
    def _check(self) -> ServeWorkload:
        if (self.concurrency is None) == (self.request_rate is None):
            raise PlanError("give exactly one of concurrency (closed loop) or request_rate (requests/s; inf = all "
                            "at once)")
        return self

    @property
    def offline(self) -> bool:
        return self.request_rate is not None and math.isinf(self.request_rate)

    @property
    def prefill_tokens(self) -> float:
        """Prompt tokens that are actually computed (prefix-cache hits skipped)."""
        return max(1.0, self.isl * (1.0 - self.prefix_hit))


_TARGET = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s)\s*(?:@\s*p([0-9]{1,2}(?:\.[0-9]+)?))?\s*$", re.IGNORECASE)


class LatencyTarget(Frozen):
    """A latency limit at a percentile, e.g. '2s@p90' (90% of requests within 2 s)."""

    limit_s: float = Field(gt=0)
    """The limit, seconds."""
    percentile: float = Field(default=50.0, gt=0, lt=100)
    """Percentile of requests that must meet it."""

    @classmethod
    def parse(cls, text: str, what: str) -> LatencyTarget:
        match = _TARGET.match(text)
        if not match:
            raise PlanError(f"{what} target {text!r} is not like '2s@p90' or '50ms@p99'; write a number, ms or s, "
                            "and optionally @pNN")
        value, unit, pct = match.groups()
        limit = float(value) * (1e-3 if unit.lower() == "ms" else 1.0)
        if limit <= 0:
            raise PlanError(f"{what} target {text!r} must be positive")
        percentile = float(pct) if pct else 50.0
        if not 0 < percentile < 100:
            raise PlanError(f"{what} target {text!r}: the percentile must lie between p0 and p100, e.g. @p90")
        return cls(limit_s=limit, percentile=percentile)

    def label(self) -> str:
        shown = f"{self.limit_s * 1e3:g}ms" if self.limit_s < 1 else f"{self.limit_s:g}s"
        return f"{shown}@p{self.percentile:g}"


def _rows(path: Path, what: str) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"{what} {str(path)!r} cannot be read ({exc}); pass a CSV file") from None
    rows = [[c.strip() for c in line.split(",")] for line in text.splitlines() if line.strip()
            and not line.lstrip().startswith("#")]
    if rows and any(ch.isalpha() for ch in rows[0][0]) and not _is_number(rows[0][0]):
        rows = rows[1:]  # a header line names its columns
    if not rows:
        raise PlanError(f"{what} {str(path)!r} has no rows; write one row per line")
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_histogram(path: Path, what: str) -> tuple[tuple[int, float], ...]:
    """A length histogram CSV: `tokens,count` per line (a header line is allowed)."""
    out = []
    for i, row in enumerate(_rows(path, what), 1):
        try:
            tokens, weight = int(float(row[0])), float(row[1])
        except (ValueError, IndexError):
            raise PlanError(f"{what} {str(path)!r} row {i}: {row!r} is not 'tokens,count'") from None
        if tokens <= 0 or weight < 0:
            raise PlanError(f"{what} {str(path)!r} row {i}: tokens must be positive and counts not negative")
        out.append((tokens, weight))
    if sum(w for _, w in out) <= 0:
        raise PlanError(f"{what} {str(path)!r}: the counts sum to zero")
    return tuple(out)


def histogram_mean(hist: tuple[tuple[int, float], ...]) -> float:
    total = sum(w for _, w in hist)
    return sum(t * w for t, w in hist) / total


def load_trace(path: Path) -> tuple[tuple[float, int, int], ...]:
    """A request trace CSV: `arrival_s,isl,osl` per line (a header line is allowed), sorted by arrival."""
    out = []
    for i, row in enumerate(_rows(path, "--trace"), 1):
        try:
            t, isl, osl = float(row[0]), int(float(row[1])), int(float(row[2]))
        except (ValueError, IndexError):
            raise PlanError(f"--trace {str(path)!r} row {i}: {row!r} is not 'arrival_s,isl,osl'") from None
        if t < 0 or isl <= 0 or osl <= 0 or not math.isfinite(t):
            raise PlanError(f"--trace {str(path)!r} row {i}: arrival must be >= 0 and lengths positive")
        out.append((t, isl, osl))
    out.sort()
    if len(out) < 2 or out[-1][0] <= out[0][0]:
        raise PlanError(f"--trace {str(path)!r} needs at least two requests at different times")
    return tuple(out)


def trace_workload(trace: tuple[tuple[float, int, int], ...], prefix_hit: float = 0.0) -> ServeWorkload:
    """The workload of a trace: its mean rate and lengths, the trace itself for the simulation."""
    span = trace[-1][0] - trace[0][0]
    rate = (len(trace) - 1) / span
    isl = max(1, round(sum(r[1] for r in trace) / len(trace)))
    osl = max(1, round(sum(r[2] for r in trace) / len(trace)))
    return ServeWorkload(isl=isl, osl=osl, request_rate=rate, prefix_hit=prefix_hit, num_requests=len(trace),
                         trace=trace)
