"""The training strategy space: a product of named axes, enumerated in chunks, pruned with reasons.

Every axis has a list of candidate values; the space is their Cartesian product, addressed by one flat
index (C order, the last axis fastest) and decoded chunk by chunk with `numpy.unravel_index` — no nested
loop per axis. `dp` is not an axis: it is what the GPU count leaves, N / (tp·pp·cp). Rows are pruned by the
validity rules of `meshplan.strategy` (each pruned row counted under the first rule it breaks), then by
memory once the cost model has priced them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from meshplan.errors import PlanError
from meshplan.specs import ClusterSpec, ModelSpec, TrainWorkload
from meshplan.specs.base import Frozen
from meshplan.strategy import RECOMPUTE_CODES, RULES, SCHEDULE_CODES, Recompute, Schedule, StrategyTable

AXES = ("tp", "pp", "cp", "ep", "sequence_parallel", "vpp", "micro_batch", "zero", "recompute", "schedule")
NOT_DIVIDING = "tp*pp*cp does not divide the GPU count"
MAX_MICRO_BATCH = 16  # sequences: larger micro-batches add memory and no GEMM efficiency at LLM sizes
MAX_VPP = 16  # model chunks per rank; Megatron recipes use up to ~20, the bubble gain beyond is marginal


class SpaceConstraints(Frozen):
    """Pins and limits on the axes; None leaves an axis free."""

    tp: int | None = Field(default=None, gt=0)
    pp: int | None = Field(default=None, gt=0)
    cp: int | None = Field(default=None, gt=0)
    ep: int | None = Field(default=None, gt=0)
    dp: int | None = Field(default=None, gt=0)
    vpp: int | None = Field(default=None, gt=0)
    micro_batch: int | None = Field(default=None, gt=0)
    zero: int | None = Field(default=None, ge=0, le=3)
    recompute: Recompute | None = None
    schedule: Schedule | None = None
    sequence_parallel: bool | None = None
    max_tp: int | None = Field(default=None, gt=0)
    max_pp: int | None = Field(default=None, gt=0)
    max_cp: int | None = Field(default=None, gt=0)
    max_ep: int | None = Field(default=None, gt=0)


@dataclass(frozen=True)
class Axis:
    name: str
    values: np.ndarray


def _divisors(n: int, limit: int | None = None) -> list[int]:
    top = n if limit is None else min(n, limit)
    return [d for d in range(1, top + 1) if n % d == 0]


def _pick(name: str, candidates: list[int], pinned: int | None, limit: int | None) -> list[int]:
    if pinned is not None:
        return [pinned]
    values = [v for v in candidates if limit is None or v <= limit]
    if not values:
        raise PlanError(f"--max-{name.replace('_', '-')} {limit} leaves no value for {name}; raise it")
    return values


def build_axes(model: ModelSpec, cluster: ClusterSpec, workload: TrainWorkload, c: SpaceConstraints) -> list[Axis]:
    """Candidate values per axis: divisors of the GPU count for tp/pp/cp, of the expert count for ep, of the
    layer count (up to MAX_VPP) for vpp, of the global batch (up to MAX_MICRO_BATCH) for the micro-batch."""
    n = cluster.num_gpus
    if c.dp is not None and n % c.dp:
        raise PlanError(f"--dp {c.dp} does not divide num_gpus={n}; choose a dp that divides the GPU count")
    for name in ("tp", "pp", "cp"):
        value = getattr(c, name)
        if value is not None and n % value:
            raise PlanError(f"--{name} {value} does not divide num_gpus={n}; choose a {name} that divides the GPU count")
    ints = {
        "tp": _pick("tp", _divisors(n), c.tp, c.max_tp),
        "pp": _pick("pp", _divisors(n, model.num_layers), c.pp, c.max_pp),
        "cp": _pick("cp", _divisors(n), c.cp, c.max_cp),
        "ep": _pick("ep", _divisors(model.num_experts) if model.is_moe else [1], c.ep, c.max_ep),
        "vpp": _pick("vpp", _divisors(model.num_layers, MAX_VPP), c.vpp, None),
        "micro_batch": _pick("micro_batch", _divisors(workload.global_batch, MAX_MICRO_BATCH), c.micro_batch, None),
        "zero": [c.zero] if c.zero is not None else [0, 1, 2, 3],
    }
    axes = [Axis(k, np.array(ints[k], dtype=np.int64)) for k in ("tp", "pp", "cp", "ep")]
    sp = [c.sequence_parallel] if c.sequence_parallel is not None else [False, True]
    axes.append(Axis("sequence_parallel", np.array(sp, dtype=bool)))
    axes += [Axis(k, np.array(ints[k], dtype=np.int64)) for k in ("vpp", "micro_batch", "zero")]
    rc = [c.recompute] if c.recompute else list(RECOMPUTE_CODES)
    axes.append(Axis("recompute", np.array([RECOMPUTE_CODES.index(r) for r in rc], dtype=np.int64)))
    sched = [c.schedule] if c.schedule else list(SCHEDULE_CODES)
    axes.append(Axis("schedule", np.array([SCHEDULE_CODES.index(s) for s in sched], dtype=np.int64)))
    assert tuple(a.name for a in axes) == AXES
    return axes


def space_size(axes: list[Axis]) -> int:
    return int(np.prod([len(a.values) for a in axes], dtype=np.int64))


def chunks(axes: list[Axis], num_gpus: int, chunk_size: int = 1 << 18) -> Iterator[tuple[np.ndarray, StrategyTable]]:
    """(flat indices, strategy table) for consecutive slices of the product; dp = N / (tp·pp·cp), 0 where
    that does not divide."""
    shape = tuple(len(a.values) for a in axes)
    total = space_size(axes)
    for start in range(0, total, chunk_size):
        flat = np.arange(start, min(start + chunk_size, total), dtype=np.int64)
        idx = np.unravel_index(flat, shape)
        cols = {a.name: a.values[i] for a, i in zip(axes, idx)}
        model_parallel = cols["tp"] * cols["pp"] * cols["cp"]
        dp = np.where(num_gpus % model_parallel == 0, num_gpus // model_parallel, 0)
        yield flat, StrategyTable(dp=dp, **cols)


def prune(table: StrategyTable, model: ModelSpec, cluster: ClusterSpec, workload: TrainWorkload,
          c: SpaceConstraints) -> tuple[np.ndarray, dict[str, int]]:
    """Valid rows, and how many rows each reason pruned (a row counts under the first reason it meets)."""
    alive = table.dp > 0
    counts = {NOT_DIVIDING: int((~alive).sum())}
    if c.dp is not None:
        pinned = alive & (table.dp != c.dp)
        counts[f"dp differs from the pinned --dp {c.dp}"] = int(pinned.sum())
        alive &= ~pinned
    safe = table.take(alive)  # rules divide by dp: evaluate them on the rows that have one
    keep = np.ones(len(safe), dtype=bool)
    for rule in RULES:
        if not keep.any():
            break
        broken = keep & np.asarray(rule.violated(safe, model, cluster, workload), dtype=bool)
        if broken.any():
            counts[rule.reason] = counts.get(rule.reason, 0) + int(broken.sum())
            keep &= ~broken
    valid = np.zeros(len(table), dtype=bool)
    valid[np.flatnonzero(alive)[keep]] = True
    return valid, {k: v for k, v in counts.items() if v}
