"""Heterogeneous clusters: pipeline stages on device groups of different GPU types (AMP / Metis style).

`--gpu A100-80GB:64,H100:64` is two device groups. A base strategy (dp, tp, cp, micro-batch, ZeRO, ...) is
replicated in both; its model-parallel group of g = dp·tp·cp GPUs repeats N_k / g times in group k, so group k
runs pp_k = N_k / g consecutive pipeline stages and pp = Σ pp_k (AMP, Li et al. 2022, §3: stages placed on
device groups; Metis, Um et al. 2024, §4: heterogeneous stage assignment). Each stage's layers are priced on its
own GPU type (its per-layer table); the stage DP then finds the exact best split of the layers over the stages
of all groups at once, which is how layers move from the slower to the faster GPUs, and every order of the
groups along the pipeline is tried. The link between two groups is priced: the stages on either side of a
group boundary send (forward) and receive (backward) one activation per micro-batch over the cross-group
network, α + bytes / bandwidth each way, not overlapped (added to those stages' time).

Memory: every stage is held to the smallest usable capacity of the groups (exact when the capacities are
equal, as for A100-80GB and H100-80GB; conservative otherwise).
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field

import numpy as np

from meshplan.cost.efficiency import Efficiency
from meshplan.cost.memory import ACT_BYTES
from meshplan.cost.nonuniform import NUM_OPTIONS, LayerCostTable, PricedPlans, fits, layer_cost_table, step_time
from meshplan.errors import PlanError
from meshplan.search.base import SearchRequest
from meshplan.search.exhaustive import search_exhaustive
from meshplan.search.nonuniform import (
    DpSolution,
    NonUniformPlan,
    best_split,
    plan_of,
    recompute_of,
    stage_choices,
    stage_cost_tensor,
    uniform_plan,
)
from meshplan.space import SpaceConstraints
from meshplan.specs import ClusterSpec, ModelSpec, TrainWorkload
from meshplan.specs.catalog import load_gpu
from meshplan.specs.cluster import make_cluster
from meshplan.strategy import Strategy


def parse_gpu_groups(text: str) -> list[tuple[str, int]]:
    """'A100-80GB:64,H100:64' -> [('A100-80GB', 64), ('H100', 64)]."""
    groups = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([^:,]+?)\s*:\s*(\d+)\s*", part)
        if not m or int(m.group(2)) <= 0:
            raise PlanError(f"--gpu {text!r}: {part.strip()!r} is not NAME:COUNT; write e.g. A100-80GB:64,H100:64")
        groups.append((m.group(1), int(m.group(2))))
    if len(groups) < 2:
        raise PlanError(f"--gpu {text!r} names one device group; give two or more, e.g. A100-80GB:64,H100:64")
    return groups


def group_clusters(groups: list[tuple[str, int]], gpus_per_node: int | None = None) -> list[ClusterSpec]:
    """One cluster spec per device group, with its GPU's usual system (links, GPUs per node)."""
    return [make_cluster(load_gpu(name), count, gpus_per_node=gpus_per_node) for name, count in groups]


@dataclass(frozen=True)
class HeteroTable:
    """Per-layer costs of one base strategy on every group, in pipeline order: prices plans like a `LayerCostTable`."""

    strategy: Strategy
    """The base strategy, pp = the stages of all groups."""
    tables: list[LayerCostTable]
    """One per group in pipeline order, each priced on the group's GPU."""
    group_of_stage: np.ndarray
    names: list[str]
    """GPU name of each group, in pipeline order."""
    cross_s: np.ndarray
    """[stage] seconds per micro-batch of cross-group sends and receives (zero away from group boundaries)."""

    @property
    def num_layers(self) -> int:
        return self.tables[0].num_layers

    @property
    def num_stages(self) -> int:
        return len(self.group_of_stage)

    @property
    def num_microbatches(self) -> float:
        return self.tables[0].num_microbatches

    def price(self, bounds: np.ndarray, recompute: np.ndarray) -> PricedPlans:
        per_group = [t.price(bounds, recompute) for t in self.tables]
        stages = np.arange(self.num_stages)
        stage_time = np.stack([per_group[g].stage_time_s[:, s] for s, g in zip(stages, self.group_of_stage)], axis=1)
        stage_time = stage_time + self.cross_s
        stage_bytes = np.stack([per_group[g].stage_bytes[:, s] for s, g in zip(stages, self.group_of_stage)], axis=1)
        slowest = max(self.tables, key=lambda t: t.other_s)
        step = step_time(slowest, stage_time)
        return PricedPlans(step, stage_time, stage_bytes, slowest.tokens_per_step / step)

    def label(self) -> str:
        counts = np.bincount(self.group_of_stage, minlength=len(self.names))
        return " + ".join(f"{c} stage{'s' if c > 1 else ''} on {n}" for n, c in zip(self.names, counts))


def hetero_table(model: ModelSpec, clusters: list[ClusterSpec], workload: TrainWorkload, base: Strategy,
                 eff: Efficiency, order: tuple[int, ...], cross_bytes_per_s: float | None = None) -> HeteroTable:
    """The base strategy's tables on every group, the groups along the pipeline in `order`."""
    g = base.dp * base.tp * base.cp
    stages_of = [c.num_gpus // g for c in clusters]
    total = sum(stages_of)
    strategy = base.model_copy(update={"pp": total, "recompute": "none"})
    whole = sum(c.num_gpus for c in clusters)
    tables = [layer_cost_table(model, clusters[k].model_copy(update={"num_gpus": whole}), workload, strategy, eff)
              for k in order]
    group_of_stage = np.repeat(np.arange(len(order)), [stages_of[k] for k in order])
    # Cross-group link: one activation (scattered over tp) each way per micro-batch (Narayanan 2021 §4.1), α-β.
    nbytes = workload.seq_len / base.cp * base.micro_batch * model.hidden * ACT_BYTES / base.tp
    bandwidth = cross_bytes_per_s or min(c.inter_node_bytes_per_s for c in clusters) * eff.inter_node_bandwidth
    latency = max(c.inter_node_latency_s for c in clusters)
    hop = 2.0 * (latency + nbytes / bandwidth)  # send forward activation + receive backward gradient
    boundary = np.zeros(total)
    edges = np.flatnonzero(np.diff(group_of_stage))  # stage e is the last of a group, e + 1 the first of the next
    boundary[edges] += hop
    boundary[edges + 1] += hop
    return HeteroTable(strategy, tables, group_of_stage, [clusters[k].gpu.name for k in order], boundary)


def solve_hetero_dp(table: HeteroTable, memory_limit_bytes: float) -> DpSolution:
    """The exact best split of the layers over the stages of every group, with per-layer recomputation."""
    choices = [stage_choices(t, memory_limit_bytes) for t in table.tables]
    tensors = [stage_cost_tensor(t, c) for t, c in zip(table.tables, choices)]
    cost = np.stack([tensors[g][s] for s, g in enumerate(table.group_of_stage)]) + table.cross_s[:, None, None]
    found = best_split(cost, table.num_microbatches)
    if found is None:
        return DpSolution(None, cost.size)
    bounds, passes = found
    recompute = np.zeros(table.num_layers, dtype=np.int64)
    for g, (t, c) in enumerate(zip(table.tables, choices)):
        mine = {s for s in range(table.num_stages) if table.group_of_stage[s] == g}
        codes = recompute_of(t, c, bounds, stages=mine)
        for s in mine:
            recompute[bounds[s]:bounds[s + 1]] = codes[bounds[s]:bounds[s + 1]]
    return DpSolution(plan_of(table, bounds, recompute), cost.size * passes)


@dataclass(frozen=True)
class HeteroResult:
    best: NonUniformPlan | None
    best_table: HeteroTable | None
    best_uniform: NonUniformPlan | None
    """The best even split with one recomputation over the same bases and orders, same pricing."""
    evaluations: int
    seconds: float
    tables: list[HeteroTable] = field(default_factory=list)
    history: list[tuple[int, float, float]] = field(default_factory=list)


def hetero_tables(request: SearchRequest, clusters: list[ClusterSpec], max_bases: int = 8,
                  cross_bytes_per_s: float | None = None) -> list[HeteroTable]:
    """Candidate bases from the uniform search of the whole cluster on the first group's GPU, kept when their
    model-parallel group divides every device group; each in every order of the groups."""
    sizes = [c.num_gpus for c in clusters]
    constraints = request.constraints if request.constraints.vpp is not None else \
        request.constraints.model_copy(update={"vpp": 1})
    uniform = search_exhaustive(request.model_copy(update={"constraints": SpaceConstraints(**{
        **constraints.model_dump(), "pp": None}), "top_k": 0}))
    seen: dict[Strategy, None] = {}
    for i in range(len(uniform.ranked)):
        s = uniform.ranked.table.row(i).model_copy(update={"recompute": "none"})
        g = s.dp * s.tp * s.cp
        if any(n % g for n in sizes) or sum(n // g for n in sizes) > request.model.num_layers:
            continue
        if request.constraints.pp is not None and sum(n // g for n in sizes) != request.constraints.pp:
            continue
        seen.setdefault(s.model_copy(update={"pp": 1}), None)
        if len(seen) == max_bases:
            break
    orders = list(itertools.permutations(range(len(clusters))))
    return [hetero_table(request.model, clusters, request.workload, s, request.efficiency, order, cross_bytes_per_s)
            for s in seen for order in orders]


def search_hetero(request: SearchRequest, clusters: list[ClusterSpec], algorithm: str = "dp", max_bases: int = 8,
                  evaluations: int = 20_000, seed: int = 0, cross_bytes_per_s: float | None = None) -> HeteroResult:
    """`request.cluster` is the whole cluster (its GPU type: the first group's) for the validity rules; the
    groups' own GPUs price the stages."""
    from meshplan.search.nonuniform_search import plan_space, search_stochastic

    tables = hetero_tables(request, clusters, max_bases, cross_bytes_per_s)
    limit = min(c.gpu.hbm_bytes for c in clusters) * (1.0 - request.memory_headroom)
    started = time.perf_counter()
    if not tables:
        raise PlanError("no base strategy's model-parallel group divides every device group; use group sizes "
                        "with a common divisor (e.g. multiples of 8)")
    uniform = [p for t in tables for r in range(NUM_OPTIONS) if fits((p := uniform_plan(t, r)).peak_bytes, limit)]
    best_uniform = max(uniform, key=lambda p: p.tokens_per_s) if uniform else None
    if algorithm == "dp":
        best, best_table, spent, history = None, None, 0, []
        for t in tables:
            solution = solve_hetero_dp(t, limit)
            spent += solution.evaluations
            if solution.plan is not None and (best is None or solution.plan.tokens_per_s > best.tokens_per_s):
                best, best_table = solution.plan, t
                history.append((spent, time.perf_counter() - started, best.tokens_per_s))
        return HeteroResult(best, best_table, best_uniform, spent, time.perf_counter() - started, tables, history)
    space = plan_space(tables, limit)
    tracker = search_stochastic(space, algorithm, evaluations, seed)
    plan = space.best_plan(tracker)
    chosen = tables[tracker.best[0]] if plan is not None and tracker.best is not None else None
    return HeteroResult(plan, chosen, best_uniform, tracker.evaluations, time.perf_counter() - started, tables,
                        tracker.history)
