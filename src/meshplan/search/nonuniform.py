"""Non-uniform plans for one base strategy: the exact joint DP over stage bounds and per-layer recomputation.

A stage's best time under its memory limit depends only on how many layers of each kind it holds (layers of a
kind cost the same) and on its position (micro-batches in flight, embedding or head). For the main kind the
per-layer choice is a multiple-choice knapsack with identical items, solved in closed form: with f layers
fully recomputed, the others run without recomputation as long as memory allows and selectively after that
(each swap costs the same bytes and saves the same seconds). The leading dense layers of an MoE model
(at most a few) are enumerated. `search.recompute_dp.choose_recompute` is the general knapsack and the
tests' oracle for this closed form.

The split then comes from `search.stage_dp`: the min-max kernel gives the smallest slowest stage T*; the step
time m·max + (pp-1)·mean also rewards a smaller total, so splits with a slowest stage T > T* are tried (min-sum
DP under the cap T) for as long as m·T + (pp-1)/pp·(least possible total) can still beat the best found. The
result is the exact optimum of the plan space; `brute_force` enumerates that space for the tests.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from meshplan.cost.nonuniform import FULL_CODE, LEADING, NUM_OPTIONS, LayerCostTable, PricedPlans, fits
from meshplan.search.stage_dp import partition_min_sum, partition_table
from meshplan.strategy import RECOMPUTE_CODES, Recompute, Strategy

NONE_CODE, SELECTIVE_CODE = RECOMPUTE_CODES.index("none"), RECOMPUTE_CODES.index("selective")


@dataclass(frozen=True)
class NonUniformPlan:
    """A base strategy with its own layers per stage and recomputation per layer, and its predicted figures."""

    strategy: Strategy
    bounds: tuple[int, ...]
    """Stage s holds layers bounds[s] .. bounds[s+1]-1."""
    recompute: tuple[int, ...]
    """Recomputation code per layer (index into RECOMPUTE_CODES)."""
    step_time_s: float
    tokens_per_s: float
    peak_bytes: float
    stage_time_s: tuple[float, ...]
    """Seconds per micro-batch of each stage."""
    stage_bytes: tuple[float, ...]

    @property
    def layers_per_stage(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.bounds, self.bounds[1:]))

    @property
    def bottleneck_stage(self) -> int:
        return int(np.argmax(self.stage_time_s))

    def recompute_names(self) -> list[Recompute]:
        return [RECOMPUTE_CODES[c] for c in self.recompute]

    def layers_label(self) -> str:
        """'7, 8x14, 7'."""
        return runs_label(list(self.layers_per_stage))

    def recompute_label(self) -> str:
        """'none 124, full 2'."""
        names = self.recompute_names()
        return ", ".join(f"{r} {names.count(r)}" for r in RECOMPUTE_CODES if names.count(r))


def runs_label(values: list[int]) -> str:
    """[7, 8, 8, 8, 7] -> '7, 8x3, 7'."""
    return ", ".join(f"{k}x{n}" if (n := len(list(g))) > 1 else str(k) for k, g in itertools.groupby(values))


class Pricer(Protocol):
    """What prices plans of one base: a `LayerCostTable`, or a heterogeneous one (`search.hetero`)."""

    @property
    def strategy(self) -> Strategy: ...

    @property
    def num_layers(self) -> int: ...

    @property
    def num_stages(self) -> int: ...

    def price(self, bounds: np.ndarray, recompute: np.ndarray) -> PricedPlans: ...


def plan_of(table: Pricer, bounds: np.ndarray | tuple[int, ...], recompute: np.ndarray | tuple[int, ...]
            ) -> NonUniformPlan:
    p = table.price(np.asarray(bounds)[None], np.asarray(recompute)[None])
    return NonUniformPlan(table.strategy, tuple(int(b) for b in bounds), tuple(int(r) for r in recompute),
                          float(p.step_time_s[0]), float(p.tokens_per_s[0]), float(p.peak_bytes[0]),
                          tuple(map(float, p.stage_time_s[0])), tuple(map(float, p.stage_bytes[0])))


def uniform_plan(table: Pricer, recompute_code: int) -> NonUniformPlan:
    """The uniform plan of the base strategy: the even split of `cost.stages`, one recomputation for all layers."""
    from meshplan.cost.nonuniform import uniform_bounds

    return plan_of(table, uniform_bounds(table.num_layers, table.num_stages),
                   np.full(table.num_layers, recompute_code))


@dataclass(frozen=True)
class StageChoices:
    """Best time of a stage by (stage, leading layers d, main layers k), and the recomputation counts behind it."""

    time_s: np.ndarray
    """[stage, d, k] seconds (inf: does not fit)."""
    counts: np.ndarray
    """[stage, d, k, 4]: leading full, leading selective, main full, main without recomputation."""


def stage_choices(table: LayerCostTable, memory_limit_bytes: float) -> StageChoices:
    """Closed-form per-stage recomputation for every count of layers (see the module docstring)."""
    n, stages = table.num_layers, table.num_stages
    nd = int((table.kind == LEADING).sum())
    budget = memory_limit_bytes - table.edge_bytes()
    k = np.arange(n + 1)[:, None].astype(np.float64)  # main layers on the stage
    f = np.arange(n + 1)[None, :].astype(np.float64)  # of which fully recomputed
    t_lead, t_main = table.time_s[LEADING], table.time_s[1]
    a_lead, a_main = table.act_bytes[LEADING], table.act_bytes[1]
    time = np.full((stages, nd + 1, n + 1), np.inf)
    counts = np.zeros((stages, nd + 1, n + 1, 4), dtype=np.int64)
    r = k - f
    for s in range(stages):
        fl = table.in_flight[s]
        step_bytes = fl * (a_main[NONE_CODE] - a_main[SELECTIVE_CODE])  # bytes saved per selective instead of none
        for fd, sd, ad in ((x, y, d - x - y) for d in range(nd + 1) for x in range(d + 1) for y in range(d - x + 1)):
            d = fd + sd + ad
            lead_time = fd * t_lead[FULL_CODE] + sd * t_lead[SELECTIVE_CODE] + ad * t_lead[NONE_CODE]
            lead_bytes = d * table.state_bytes[LEADING] + fl * (fd * a_lead[FULL_CODE] + sd * a_lead[SELECTIVE_CODE]
                                                                 + ad * a_lead[NONE_CODE])
            working = np.where((f > 0) | (fd > 0), table.working_bytes, 0.0)
            rem = (budget[s] - lead_bytes - k * table.state_bytes[1] - working
                   - fl * (f * a_main[FULL_CODE] + r * a_main[SELECTIVE_CODE]))
            ok = (r >= 0) & (rem >= 0)
            if step_bytes > 0:
                a = np.clip(np.floor(np.where(ok, rem, 0.0) / step_bytes), 0.0, np.maximum(r, 0.0))
            else:  # no recomputation keeps no more than selective: it always wins
                a = np.maximum(r, 0.0)
            t = np.where(ok, lead_time + f * t_main[FULL_CODE] + a * t_main[NONE_CODE] + (r - a) * t_main[SELECTIVE_CODE],
                         np.inf)
            best_f = np.argmin(t, axis=1)
            best_t = t[np.arange(n + 1), best_f]
            better = best_t < time[s, d]
            time[s, d] = np.where(better, best_t, time[s, d])
            chosen = np.stack([np.full(n + 1, fd), np.full(n + 1, sd), best_f,
                               a[np.arange(n + 1), best_f].astype(np.int64)], axis=1)
            counts[s, d] = np.where(better[:, None], chosen, counts[s, d])
    return StageChoices(time, counts)


def _interval_counts(table: LayerCostTable) -> tuple[np.ndarray, np.ndarray]:
    """[i, j] leading and main layers among layers i..j-1 (zero where i >= j)."""
    n = table.num_layers
    nd = int((table.kind == LEADING).sum())
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    d = np.clip(np.minimum(j, nd) - i, 0, None)
    k = np.clip(j - i - d, 0, None)
    return np.where(i < j, d, 0), np.where(i < j, k, 0)


def stage_cost_tensor(table: LayerCostTable, choices: StageChoices) -> np.ndarray:
    """[stage, i, j]: the best time of layers i..j-1 on the stage (inf where empty or over memory)."""
    d, k = _interval_counts(table)
    n = table.num_layers
    nonempty = np.arange(n + 1)[:, None] < np.arange(n + 1)[None, :]
    return np.where(nonempty[None], choices.time_s[:, d, k] + table.edge_time_s()[:, None, None], np.inf)


@dataclass(frozen=True)
class DpSolution:
    plan: NonUniformPlan | None
    evaluations: int
    """Stage-cost entries priced (stages x layer intervals) plus the DP passes' cells."""


def solve_dp(table: LayerCostTable, memory_limit_bytes: float) -> DpSolution:
    """The exact best non-uniform plan of one base strategy (None when nothing fits)."""
    choices = stage_choices(table, memory_limit_bytes)
    cost = stage_cost_tensor(table, choices)
    found = best_split(cost, table.num_microbatches)
    if found is None:
        return DpSolution(None, cost.size)
    bounds, passes = found
    return DpSolution(plan_of(table, bounds, recompute_of(table, choices, bounds)), cost.size * passes)


def best_split(cost: np.ndarray, num_microbatches: float) -> tuple[tuple[int, ...], int] | None:
    """The split minimising m · slowest + (S-1)/S · total stage time over a [stage, i, j] cost tensor, exactly:
    (bounds, DP passes spent), or None when no split fits."""
    stages = cost.shape[0]
    found = partition_table(cost)
    if found is None:
        return None
    m, c = num_microbatches, (stages - 1) / stages
    least_total = partition_min_sum(cost, np.inf)
    _, slowest = found
    at_cap = partition_min_sum(cost, slowest)
    assert least_total is not None and at_cap is not None
    best_bounds, best_obj = at_cap[0], m * slowest + c * at_cap[1]
    passes = 3
    limit = slowest + c * (at_cap[1] - least_total[1]) / m
    finite = cost[np.isfinite(cost)]
    for cap in np.unique(finite[(finite > slowest) & (finite <= limit)]):
        if m * cap + c * least_total[1] >= best_obj:
            break
        found_cap = partition_min_sum(cost, float(cap))
        passes += 1
        if found_cap is None:
            continue
        slow = max(cost[s, found_cap[0][s], found_cap[0][s + 1]] for s in range(stages))
        obj = m * slow + c * found_cap[1]
        if obj < best_obj:
            best_bounds, best_obj = found_cap[0], obj
    return best_bounds, passes


def recompute_of(table: LayerCostTable, choices: StageChoices, bounds: tuple[int, ...],
                 stages: set[int] | None = None) -> np.ndarray:
    """Per-layer codes that realise each stage's chosen counts (layers of a kind are interchangeable)."""
    d_of, k_of = _interval_counts(table)
    out = np.full(table.num_layers, NONE_CODE)
    for s, (i, j) in enumerate(itertools.pairwise(bounds)):
        if stages is not None and s not in stages:
            continue
        d, k = int(d_of[i, j]), int(k_of[i, j])
        fd, sd, fm, am = (int(x) for x in choices.counts[s, d, k])
        lead = [FULL_CODE] * fd + [SELECTIVE_CODE] * sd + [NONE_CODE] * (d - fd - sd)
        main = [FULL_CODE] * fm + [NONE_CODE] * am + [SELECTIVE_CODE] * (k - fm - am)
        out[i:j] = lead + main
    return out


def brute_force(table: Pricer, memory_limit_bytes: float) -> NonUniformPlan | None:
    """Every split and every per-layer recomputation (3^L · C(L-1, pp-1) plans: tests only)."""
    n, stages = table.num_layers, table.num_stages
    splits = np.array([(0, *cuts, n) for cuts in itertools.combinations(range(1, n), stages - 1)])
    options = np.array(list(itertools.product(range(NUM_OPTIONS), repeat=n)))
    bounds = np.repeat(splits, len(options), axis=0)
    recompute = np.tile(options, (len(splits), 1))
    p = table.price(bounds, recompute)
    ok = fits(p.peak_bytes, memory_limit_bytes)
    if not ok.any():
        return None
    best = int(np.argmin(np.where(ok, p.step_time_s, np.inf)))
    return plan_of(table, bounds[best], recompute[best])
