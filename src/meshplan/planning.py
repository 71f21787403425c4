"""`meshplan plan` as a library call: search one or several cluster sizes, choose, explain, write a Plan."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, ValidationError

from meshplan import __version__
from meshplan.errors import PlanError, first_error
from meshplan.estimator import JobRequest, estimate_from_cost
from meshplan.plan import Plan
from meshplan.search.base import Objective, SearchRequest, SearchResult
from meshplan.search.exhaustive import search_exhaustive
from meshplan.space import NOT_DIVIDING, SpaceConstraints

PlanObjective = Literal["throughput", "memory", "min-gpus"]
_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_count(text: str, what: str) -> float:
    """'15T', '300B', '2.5e12', '1,000,000' -> a number; a clear error otherwise."""
    m = re.fullmatch(r"\s*([0-9][0-9_,]*\.?[0-9]*(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*", text.upper())
    if not m:
        raise PlanError(f"{what}={text!r} is not a count; write e.g. 15T, 300B or 2.5e12")
    value = float(m.group(1).replace(",", "").replace("_", "")) * _SUFFIX[m.group(2)]
    if value <= 0:
        raise PlanError(f"{what}={text!r} must be positive")
    return value


def parse_sizes(text: str) -> list[int]:
    """'64,128,256' -> [64, 128, 256]."""
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) <= 0:
            raise PlanError(f"--num-gpus {text!r}: {part!r} is not a positive integer; write e.g. 64 or 64,128,256")
        sizes.append(int(part))
    return sorted(set(sizes))


class PlanRequest(JobRequest):
    """Everything `meshplan plan` needs."""

    num_gpus: list[int] = Field(min_length=1)
    """One or several cluster sizes; each is searched."""
    constraints: SpaceConstraints = SpaceConstraints()
    objective: PlanObjective = "throughput"
    target_tokens_per_s: float | None = Field(default=None, gt=0)
    """Throughput the min-gpus objective must reach (tokens/s for the whole job)."""
    memory_headroom: float = Field(default=0.0, ge=0.0, lt=1.0)
    top_k: int = Field(default=10, ge=0)
    """Plans to show per size; 0 shows every plan that fits."""
    train_tokens: float | None = Field(default=None, gt=0)
    """Tokens to train on: adds the time to train."""
    gpu_hour_price: float | None = Field(default=None, gt=0)
    """Price of one GPU-hour: adds the cost to train (needs train_tokens)."""


def parse_plan_request(fields: dict[str, Any]) -> PlanRequest:
    try:
        req = PlanRequest.model_validate(fields)
    except ValidationError as exc:
        where, msg, value = first_error(exc)
        raise PlanError(f"{where}={value!r}: {msg}; fix that value") from None
    if req.objective == "min-gpus" and req.target_tokens_per_s is None:
        raise PlanError("--objective min-gpus needs --target-tokens-per-s (the throughput to reach)")
    if req.gpu_hour_price is not None and req.train_tokens is None:
        raise PlanError("--gpu-hour-price needs --train-tokens (what the run trains on)")
    pinned_dp = req.constraints.dp
    if pinned_dp is not None and pinned_dp > req.global_batch:
        raise PlanError(f"--dp {pinned_dp} exceeds --global-batch {req.global_batch}: every data-parallel rank needs "
                        "at least one sequence; raise the global batch or lower --dp")
    if req.objective == "min-gpus" and len(req.num_gpus) < 2:
        raise PlanError("--objective min-gpus compares cluster sizes: pass several, e.g. --num-gpus 64,128,256,512")
    return req


def search_requests(req: PlanRequest) -> list[SearchRequest]:
    objective: Objective = "memory" if req.objective == "memory" else "throughput"
    out = []
    for n in req.num_gpus:
        model, cluster, workload = req.specs(n)
        out.append(SearchRequest(model=model, cluster=cluster, workload=workload, constraints=req.constraints,
                                 objective=objective, memory_headroom=req.memory_headroom, top_k=req.top_k,
                                 efficiency=req.efficiency()))
    return out


def run_plan(req: PlanRequest, progress: Callable[[int, int], None] | None = None) -> list[SearchResult]:
    """One exhaustive search per cluster size, smallest first. When no strategy of any size passes the rules,
    the input contradicts itself (pins against the model, a batch too small): that is a `PlanError`."""
    results = [search_exhaustive(r, progress=progress) for r in search_requests(req)]
    if all(r.num_valid == 0 for r in results):
        pins = ", ".join((f"--{k.replace('_', '-')}" if v else f"--no-{k.replace('_', '-')}") if isinstance(v, bool)
                         else f"--{k.replace('_', '-')} {v}"
                         for k, v in req.constraints.model_dump(exclude_none=True).items())
        hint = f"relax the pins ({pins})" if pins else "change the GPU count, batch or sequence length"
        raise PlanError(f"no strategy is valid on {', '.join(map(str, req.num_gpus))} GPUs: "
                        f"{_blocking_reason(results[0])}; {hint}")
    return results


def _blocking_reason(result: SearchResult) -> str:
    """The rule every candidate breaks (e.g. a pin against the model), or else the most frequent one."""
    import numpy as np

    from meshplan.space import build_axes, chunks
    from meshplan.strategy import RULES, violations

    req = result.request
    broken = {r.reason: True for r in RULES}
    any_row = False
    for _, table in chunks(build_axes(req.model, req.cluster, req.workload, req.constraints), req.cluster.num_gpus):
        rows = table.take(table.dp > 0)
        if not len(rows):
            continue
        any_row = True
        for rule, column in zip(RULES, violations(rows, req.model, req.cluster, req.workload).values()):
            broken[rule.reason] &= bool(np.all(column))
    blocking = [reason for reason, always in broken.items() if always] if any_row else []
    if blocking:
        return "every candidate breaks: " + "; ".join(blocking)
    if not any_row:
        return NOT_DIVIDING + " for any candidate"
    top = max(result.pruned, key=lambda k: result.pruned[k])
    return f"no single rule blocks every candidate; the most frequent is '{top}'"


def choose(req: PlanRequest, results: list[SearchResult]) -> SearchResult | None:
    """The result whose winner answers the objective (None when nothing qualifies)."""
    fitting = [r for r in results if len(r.ranked)]
    if not fitting:
        return None
    if req.objective == "min-gpus":
        assert req.target_tokens_per_s is not None
        reaching = [r for r in fitting if float(r.ranked.cost.tokens_per_s[0]) >= req.target_tokens_per_s]
        return reaching[0] if reaching else None
    if req.objective == "memory":
        return min(fitting, key=lambda r: float(r.ranked.cost.peak_memory_bytes[0]))
    return max(fitting, key=lambda r: float(r.ranked.cost.tokens_per_s[0]))


def to_plan(result: SearchResult, rank: int = 0) -> Plan:
    """The plan of row `rank` of a search result."""
    r, req = result.ranked, result.request
    est = estimate_from_cost(r.cost, rank, req.model, req.cluster, req.workload, r.table)
    search = {"algorithm": result.algorithm, "objective": req.objective, "rank": rank + 1,
              "memory_headroom": req.memory_headroom, "strategies_enumerated": result.space_size,
              "strategies_valid": result.num_valid, "strategies_fitting": result.num_fit,
              "constraints": req.constraints.model_dump(exclude_none=True)}
    return Plan(meshplan_version=__version__, model=req.model, cluster=req.cluster, workload=req.workload,
                strategy=est.strategy, efficiency=req.efficiency, estimate=est, search=search)


def what_would_fit(result: SearchResult) -> list[str]:
    """When nothing fits: the closest strategy and the changes that would make room."""
    req = result.request
    usable = req.usable_bytes / 1e9
    if result.least_memory is None:
        return ["no strategy passes the validity rules; relax the pinned axes or change the GPU count "
                f"(pruned: {', '.join(result.pruned)})"]
    least = result.least_memory
    s = least.table.row(0)
    peak = float(least.cost.peak_memory_bytes[0]) / 1e9
    hints = [f"the smallest footprint is {peak:.1f} GB per GPU ({s.label()}), over the {usable:.1f} GB usable"]
    n = req.cluster.num_gpus
    for factor in (2, 4, 8, 16, 32, 64):
        bigger = req.model_copy(update={"cluster": req.cluster.model_copy(update={"num_gpus": n * factor}),
                                        "objective": "memory", "top_k": 1})
        found = search_exhaustive(bigger)
        if len(found.ranked):
            hints.append(f"with --num-gpus {n * factor} the plan {found.ranked.table.row(0).label()} fits "
                         f"({float(found.ranked.cost.peak_memory_bytes[0]) / 1e9:.1f} GB)")
            break
    if s.recompute != "full":
        hints.append("allow --recompute full (pinned recomputation keeps activations in memory)")
    if s.micro_batch > 1:
        hints.append("allow a smaller --micro-batch")
    if req.memory_headroom > 0:
        hints.append(f"lower --memory-headroom (now {req.memory_headroom:g})")
    hints.append("a GPU with more memory (see `meshplan gpus`)")
    return hints
