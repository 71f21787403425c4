"""Exhaustive search, the oracle: every strategy of the space, vectorised chunk by chunk."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from meshplan.cost.training import training_cost
from meshplan.search.base import Ranked, SearchRequest, SearchResult, rank_order
from meshplan.space import build_axes, chunks, prune, space_size
from meshplan.strategy import StrategyTable

EXCEEDS_MEMORY = "exceeds GPU memory"


def _top(r: Ranked, k: int, objective: str) -> Ranked:
    return r.take(rank_order(r.cost, r.index, objective)[: k or None])  # type: ignore[arg-type]


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
            lowest_row = Ranked(rows.take(one), cost.take(one), flat[valid][one])
            least = _top(lowest_row if least is None else least.concat(lowest_row), 1, "memory")
            if fits.any():
                num_fit += int(fits.sum())
                chunk_best = _top(Ranked(rows.take(fits), cost.take(fits), flat[valid][fits]),
                                  request.top_k, request.objective)
                best = _top(chunk_best if best is None else best.concat(chunk_best), request.top_k, request.objective)
        if progress is not None:
            progress(done, total)
    if best is None:
        none = StrategyTable.from_strategies([])
        best = Ranked(none, training_cost(model, cluster, workload, none, request.efficiency), np.zeros(0, np.int64))
    return SearchResult(request=request, ranked=best, space_size=total, num_valid=num_valid, num_fit=num_fit,
                        pruned=pruned, least_memory=least, seconds=time.perf_counter() - started)
