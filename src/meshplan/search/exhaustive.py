"""Exhaustive search, the oracle: every strategy of the space, vectorised chunk by chunk."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from meshplan.cost.training import TrainingCost, training_cost
from meshplan.search.base import Ranked, SearchRequest, SearchResult, rank_order
from meshplan.space import build_axes, chunks, prune, space_size
from meshplan.strategy import StrategyTable

EXCEEDS_MEMORY = "exceeds GPU memory"


def _take_cost(cost: TrainingCost, rows: np.ndarray) -> TrainingCost:
    mem = type(cost.memory)(**{k: getattr(cost.memory, k)[rows] for k in cost.memory.__dataclass_fields__})
    return TrainingCost(
        step_time_s=cost.step_time_s[rows], breakdown={k: v[rows] for k, v in cost.breakdown.items()}, memory=mem,
        tokens_per_s=cost.tokens_per_s[rows], tokens_per_s_per_gpu=cost.tokens_per_s_per_gpu[rows],
        tflops_per_gpu=cost.tflops_per_gpu[rows], mfu=cost.mfu[rows], hfu=cost.hfu[rows],
        peak_memory_bytes=cost.peak_memory_bytes[rows], fits=cost.fits[rows], provenance=cost.provenance,
    )


def _concat(a: Ranked | None, b: Ranked) -> Ranked:
    if a is None:
        return b
    table = StrategyTable(**{k: np.concatenate([getattr(a.table, k), getattr(b.table, k)]) for k in a.table.__dict__})
    ca, cb = a.cost, b.cost
    mem = type(ca.memory)(**{k: np.concatenate([getattr(ca.memory, k), getattr(cb.memory, k)])
                             for k in ca.memory.__dataclass_fields__})
    cost = TrainingCost(
        step_time_s=np.concatenate([ca.step_time_s, cb.step_time_s]),
        breakdown={k: np.concatenate([ca.breakdown[k], cb.breakdown[k]]) for k in ca.breakdown},
        memory=mem,
        **{k: np.concatenate([getattr(ca, k), getattr(cb, k)]) for k in
           ("tokens_per_s", "tokens_per_s_per_gpu", "tflops_per_gpu", "mfu", "hfu", "peak_memory_bytes", "fits")},
        provenance=ca.provenance,
    )
    return Ranked(table, cost, np.concatenate([a.index, b.index]))


def _top(r: Ranked, k: int, objective: str) -> Ranked:
    order = rank_order(r.cost, r.index, objective)[: k or None]  # type: ignore[arg-type]
    return Ranked(r.table.take(order), _take_cost(r.cost, order), r.index[order])


def search_exhaustive(request: SearchRequest, progress: Callable[[int, int], None] | None = None,
                      chunk_size: int = 1 << 18) -> SearchResult:
    """Price every valid strategy; keep the top-k that fit and the least-memory one."""
    started = time.perf_counter()
    model, cluster, workload = request.model, request.cluster, request.workload
    axes = build_axes(model, cluster, workload, request.constraints)
    total = space_size(axes)
    pruned: dict[str, int] = {}
    best: Ranked | None = None
    least: Ranked | None = None
    num_valid = num_fit = done = 0
    for flat, table in chunks(axes, cluster.num_gpus, chunk_size):
        valid, counts = prune(table, model, cluster, workload, request.constraints)
        for reason, count in counts.items():
            pruned[reason] = pruned.get(reason, 0) + count
        done += len(flat)
        if valid.any():
            rows = table.take(valid)
            cost = training_cost(model, cluster, workload, rows, request.efficiency)
            num_valid += len(rows)
            fits = cost.peak_memory_bytes <= request.usable_bytes
            if (~fits).any():
                pruned[EXCEEDS_MEMORY] = pruned.get(EXCEEDS_MEMORY, 0) + int((~fits).sum())
            lowest = int(np.argmin(cost.peak_memory_bytes))
            one = np.array([lowest])
            least = _top(_concat(least, Ranked(rows.take(one), _take_cost(cost, one), flat[valid][one])), 1, "memory")
            if fits.any():
                num_fit += int(fits.sum())
                chunk_best = _top(Ranked(rows.take(fits), _take_cost(cost, fits), flat[valid][fits]),
                                  request.top_k, request.objective)
                best = _top(_concat(best, chunk_best), request.top_k, request.objective)
        if progress is not None:
            progress(done, total)
    if best is None:
        none = StrategyTable.from_strategies([])
        best = Ranked(none, training_cost(model, cluster, workload, none, request.efficiency), np.zeros(0, np.int64))
    return SearchResult(request=request, ranked=best, space_size=total, num_valid=num_valid, num_fit=num_fit,
                        pruned=pruned, least_memory=least, seconds=time.perf_counter() - started)
