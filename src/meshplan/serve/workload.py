"""`ServeWorkload` and latency targets: what a serving deployment must handle, and how fast."""

from __future__ import annotations

import math
import re

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
        return cls(limit_s=limit, percentile=float(pct) if pct else 50.0)

    def label(self) -> str:
        shown = f"{self.limit_s * 1e3:g}ms" if self.limit_s < 1 else f"{self.limit_s:g}s"
        return f"{shown}@p{self.percentile:g}"
