"""Non-uniform search behind the one interface: a `SearchRequest` in, the best non-uniform plan out.

The candidate base strategies (the degrees dp, tp, pp, cp, ep, micro-batch, ZeRO, sequence parallel; vpp 1)
are the best distinct ones of the exhaustive uniform search; each is then refined by one algorithm:

- `dp`: the exact joint stage-partition / recomputation DP of `search.nonuniform`, base by base;
- `genetic`: `search.genetic` over all bases at once;
- `policy-gradient`: `search.policy_gradient` over all bases at once.

Every result carries the evaluations it spent, its best objective over time, and the best *uniform* plan of
the same bases priced by the same per-layer model (even split, one recomputation), so that the two compare.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from meshplan.cost.nonuniform import NUM_OPTIONS, LayerCostTable, fits, layer_cost_table
from meshplan.search.base import SearchRequest, SearchResult
from meshplan.search.encoding import PlanSpace, Tracker
from meshplan.search.exhaustive import search_exhaustive
from meshplan.search.genetic import GeneticOptions, search_genetic
from meshplan.search.nonuniform import NonUniformPlan, Pricer, solve_dp, uniform_plan
from meshplan.search.policy_gradient import PolicyGradientOptions, search_policy_gradient
from meshplan.strategy import Strategy

Algorithm = Literal["dp", "genetic", "policy-gradient"]
ALGORITHMS: tuple[Algorithm, ...] = ("dp", "genetic", "policy-gradient")
DEFAULT_BASES = 8  # candidate base strategies refined per search


@dataclass(frozen=True)
class NonUniformResult:
    algorithm: str
    best: NonUniformPlan | None
    """The best non-uniform plan that fits (None when none does)."""
    best_uniform: NonUniformPlan | None
    """The best uniform plan of the same bases, priced by the same per-layer model."""
    uniform_search: SearchResult
    """The exhaustive uniform search the bases came from (its winner may use the interleaved schedule)."""
    evaluations: int
    """Plans priced (genetic, policy gradient) or DP cells visited (dp)."""
    seconds: float
    history: list[tuple[int, float, float]] = field(default_factory=list)
    """(evaluations, seconds, best tokens/s) each time the best improved."""
    bases: list[Strategy] = field(default_factory=list)

    @property
    def gain(self) -> float | None:
        """Throughput of the best non-uniform plan over the best uniform one, minus one."""
        if self.best is None or self.best_uniform is None:
            return None
        return self.best.tokens_per_s / self.best_uniform.tokens_per_s - 1.0


def candidate_tables(request: SearchRequest, max_bases: int = DEFAULT_BASES
                     ) -> tuple[list[LayerCostTable], SearchResult]:
    """Per-layer cost tables of the best distinct base strategies (vpp 1) of the uniform search."""
    constraints = request.constraints
    if constraints.vpp is None:
        constraints = constraints.model_copy(update={"vpp": 1})
    uniform = search_exhaustive(request.model_copy(update={"constraints": constraints, "top_k": 0}))
    seen: dict[Strategy, None] = {}
    for i in range(len(uniform.ranked)):
        s = uniform.ranked.table.row(i).model_copy(update={"recompute": "none"})
        seen.setdefault(s, None)
        if len(seen) == max_bases:
            break
    tables = [layer_cost_table(request.model, request.cluster, request.workload, s, request.efficiency) for s in seen]
    return tables, uniform


def _best(plans: list[NonUniformPlan | None], limit: float) -> NonUniformPlan | None:
    fitting = [p for p in plans if p is not None and fits(p.peak_bytes, limit)]
    return max(fitting, key=lambda p: p.tokens_per_s) if fitting else None


def search_stochastic(space: PlanSpace, algorithm: str, evaluations: int, seed: int) -> Tracker:
    """The genetic or the policy-gradient searcher over a plan space (the two behind one call)."""
    if algorithm == "genetic":
        return search_genetic(space, GeneticOptions(evaluations=evaluations, seed=seed))
    return search_policy_gradient(space, PolicyGradientOptions(evaluations=evaluations, seed=seed))


def search_nonuniform(request: SearchRequest, algorithm: Algorithm = "dp", max_bases: int = DEFAULT_BASES,
                      evaluations: int = 20_000, seed: int = 0) -> NonUniformResult:
    tables, uniform = candidate_tables(request, max_bases)
    limit = request.usable_bytes
    started = time.perf_counter()
    best_uniform = _best([uniform_plan(t, r) for t in tables for r in range(NUM_OPTIONS)], limit)
    if not tables:
        return NonUniformResult(algorithm, None, best_uniform, uniform, 0, time.perf_counter() - started)
    if algorithm == "dp":
        best: NonUniformPlan | None = None
        spent = 0
        history = []
        for t in tables:
            solution = solve_dp(t, limit)
            spent += solution.evaluations
            if solution.plan is not None and (best is None or solution.plan.tokens_per_s > best.tokens_per_s):
                best = solution.plan
                history.append((spent, time.perf_counter() - started, best.tokens_per_s))
        return NonUniformResult(algorithm, best, best_uniform, uniform, spent, time.perf_counter() - started,
                                history, [t.strategy for t in tables])
    space = plan_space(tables, limit)
    tracker = search_stochastic(space, algorithm, evaluations, seed)
    return NonUniformResult(algorithm, space.best_plan(tracker), best_uniform, uniform, tracker.evaluations,
                            time.perf_counter() - started, tracker.history, [t.strategy for t in tables])


def plan_space(tables: Sequence[Pricer], limit: float) -> PlanSpace:
    """The shared encoding over these bases: boundaries move up to one even stage's layers (at least 2)."""
    smallest = min(t.num_stages for t in tables)
    return PlanSpace(tables, limit, max_offset=max(2, int(np.ceil(tables[0].num_layers / max(smallest, 1)))))
