"""The plain reference search: one strategy at a time, in a Python loop.

Kept as the specification the vectorised search must match exactly (same ranking, same figures) and as the
baseline of `benchmarks/search_speed.py`. It walks the same axes in the same order, checks each strategy
with `check_strategy` and prices it as a table of one row.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from meshplan.cost.training import training_cost
from meshplan.errors import PlanError
from meshplan.search.base import Ranked, SearchRequest, SearchResult, rank_order
from meshplan.search.exhaustive import EXCEEDS_MEMORY
from meshplan.space import NOT_DIVIDING, build_axes, space_size
from meshplan.strategy import RECOMPUTE_CODES, RULES, SCHEDULE_CODES, Strategy, StrategyTable, check_strategy


def _reason(strategy: Strategy, request: SearchRequest) -> str | None:
    try:
        check_strategy(strategy, request.model, request.cluster, request.workload)
    except PlanError as exc:
        return next(r.reason for r in RULES if r.reason in str(exc))
    return None


def search_reference(request: SearchRequest, every: int = 1) -> SearchResult:
    """Exhaustive search, strategy by strategy (slow; for tests and benchmarks).

    `every` > 1 visits only every `every`-th strategy of the space: an even sample for timing the loop.
    """
    started = time.perf_counter()
    axes = build_axes(request.model, request.cluster, request.workload, request.constraints)
    n = request.cluster.num_gpus
    pruned: dict[str, int] = {}
    found: Ranked | None = None
    num_valid = num_fit = 0
    product = itertools.islice(itertools.product(*(a.values.tolist() for a in axes)), 0, None, every)
    for index, values in zip(itertools.count(0, every), product):
        v = dict(zip((a.name for a in axes), values))
        mp = v["tp"] * v["pp"] * v["cp"]
        if n % mp:
            pruned[NOT_DIVIDING] = pruned.get(NOT_DIVIDING, 0) + 1
            continue
        dp = n // mp
        if request.constraints.dp is not None and dp != request.constraints.dp:
            key = f"dp differs from the pinned --dp {request.constraints.dp}"
            pruned[key] = pruned.get(key, 0) + 1
            continue
        strategy = Strategy(dp=dp, tp=v["tp"], pp=v["pp"], cp=v["cp"], ep=v["ep"],
                            sequence_parallel=bool(v["sequence_parallel"]), vpp=v["vpp"],
                            micro_batch=v["micro_batch"], zero=v["zero"], recompute=RECOMPUTE_CODES[v["recompute"]],
                            schedule=SCHEDULE_CODES[v["schedule"]])
        reason = _reason(strategy, request)
        if reason is not None:
            pruned[reason] = pruned.get(reason, 0) + 1
            continue
        table = StrategyTable.from_strategies([strategy])
        cost = training_cost(request.model, request.cluster, request.workload, table, request.efficiency)
        num_valid += 1
        if cost.peak_memory_bytes[0] > request.usable_bytes:
            pruned[EXCEEDS_MEMORY] = pruned.get(EXCEEDS_MEMORY, 0) + 1
            continue
        num_fit += 1
        one = Ranked(table, cost, np.array([index]))
        found = one if found is None else found.concat(one)
    if found is None:
        none = StrategyTable.from_strategies([])
        ranked = Ranked(none, training_cost(request.model, request.cluster, request.workload, none, request.efficiency),
                        np.zeros(0, dtype=np.int64))
    else:
        ranked = found.take(rank_order(found.cost, found.index, request.objective)[: request.top_k or None])
    return SearchResult(request=request, ranked=ranked, space_size=space_size(axes), num_valid=num_valid,
                        num_fit=num_fit, pruned=pruned, seconds=time.perf_counter() - started, algorithm="reference")
