"""Inter-operator parallelism: slice the layers into pipeline stages and give each a submesh (Alpa's stage
construction, Zheng et al. 2022, §5).

The step time of a pipeline of B micro-batches whose stages take t_1..t_S per micro-batch is
Σ_i t_i + (B - 1)·max_i t_i (Alpa eq. 2), plus each stage's weight-gradient synchronisation o_i, which happens
once per step rather than per micro-batch (added as Σ_i o_i: no overlap with the pipeline's drain assumed). For every candidate t_max (ascending) a DP finds the cheapest
Σ t_i over contiguous layer ranges and submeshes that use every device exactly once with every t_i <= t_max
(Alpa eq. 3-4); the search stops once (B - 1)·t_max alone reaches the best plan found. A stage's t_i is the
intra-operator ILP's optimum for its layers (the prologue with the first, the epilogue with the last) on its
submesh, plus sending its output activation to the next stage and receiving its gradient. Under 1F1B the
stage i of S keeps S - i micro-batches of activations (Narayanan et al. 2021, §2.2.1); a stage whose ILP plan
does not fit with that many is infeasible (its ILP is solved with one micro-batch in flight, so a leaner
strategy that would fit is not searched: a simplification, never an invalid plan). The ILP itself still weighs
gradient synchronisation as if it ran per micro-batch when it chooses the stage's strategies.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from meshplan.cost.comm import p2p_time
from meshplan.errors import PlanError
from meshplan.shard.graph import Op, OpGraph
from meshplan.shard.ilp import solve_ilp
from meshplan.shard.mesh import LogicalMesh
from meshplan.shard.problem import build_problem
from meshplan.shard.simplify import layer_representatives, num_layer_classes
from meshplan.specs.base import Frozen

INF = math.inf


class Stage(Frozen):
    """One pipeline stage: layers [first, last], its submesh, and its cost per micro-batch."""

    first_layer: int
    last_layer: int
    submesh: tuple[int, ...]
    time_s: float
    """Forward and backward of one micro-batch, with the activation send and gradient receive."""
    grad_sync_s: float
    """Weight-gradient all-reduces, once per step."""
    memory_bytes: float
    """Weights and states plus the activations of the micro-batches in flight, per device."""
    in_flight: int


class PipelinePlan(Frozen):
    num_microbatches: int
    stages: list[Stage]
    step_time_s: float
    """Σ (t_i + o_i) + (B - 1)·max t_i."""
    stage_ilps: int
    """Distinct (layers, submesh) ILPs solved."""
    seconds: float


def submesh_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Alpa's submeshes (§5.2): (1, 2^i) inside one row of the mesh, then (k, n2) whole rows."""
    inner = shape[-1]
    row = [1 << i for i in range(inner.bit_length()) if (1 << i) < inner]
    shapes: list[tuple[int, ...]] = []
    if len(shape) == 1:
        shapes += [(s,) for s in row] + [(inner,)]
    else:
        shapes += [(1, s) for s in row] + [(k, inner) for k in range(1, shape[0] + 1)]
    return shapes


@dataclass(frozen=True)
class StageCost:
    time_s: float
    sync_s: float
    weight_bytes: float
    act_bytes: float


def stage_dp(num_layers: int, num_devices: int, sizes: list[int], num_microbatches: int,
             cost: Callable[[int, int, int, int], float], once: Callable[[int, int, int], float] | None = None,
             ) -> tuple[float, list[tuple[int, int, int, int]]]:
    """The pure kernel: (step time, stages as (first layer, end layer, submesh index, in flight)).

    `cost(l, r, s, k)` is the time per micro-batch of layers [l, r) on submesh `s` with `k` micro-batches in
    flight (INF if it does not fit); `once(l, r, s)` what the stage adds once per step. Every device is used
    exactly once.
    """
    once = once or (lambda l, r, s: 0.0)
    cands = sorted({cost(l, r, s, k) for l in range(num_layers) for r in range(l + 1, num_layers + 1)
                    for s in range(len(sizes)) for k in range(1, min(num_layers, num_devices) + 1)} - {INF})
    best: tuple[float, list[tuple[int, int, int, int]]] = (INF, [])
    for t_max in cands:
        if (num_microbatches - 1) * t_max >= best[0]:
            break
        h = _cheapest_sum(num_layers, sizes, num_microbatches, cost, once, t_max)
        for j in range(1, min(num_layers, num_devices) + 1):
            total, plan = h(0, num_devices, j)
            if total < INF and total + (num_microbatches - 1) * t_max < best[0]:
                best = (total + (num_microbatches - 1) * t_max, list(plan))
    return best


StageList = tuple[tuple[int, int, int, int], ...]


def _cheapest_sum(num_layers: int, sizes: list[int], num_microbatches: int,
                  cost: Callable[[int, int, int, int], float], once: Callable[[int, int, int], float],
                  t_max: float) -> Callable[[int, int, int], tuple[float, StageList]]:
    """h(l, d, j): the cheapest Σ (t + once) of layers [l, L) on exactly d devices in exactly j stages, each
    t <= t_max."""

    @cache
    def h(l: int, d: int, j: int) -> tuple[float, StageList]:
        if l == num_layers:
            return (0.0, ()) if d == 0 and j == 0 else (INF, ())
        if j == 0 or d <= 0:
            return INF, ()
        out: tuple[float, StageList] = (INF, ())
        for r in range(l + 1, num_layers + 1):
            for s, size in enumerate(sizes):
                if size > d:
                    continue
                k = min(j, num_microbatches)  # 1F1B: the first of j remaining stages holds j micro-batches
                t = cost(l, r, s, k)
                if t > t_max:
                    continue
                rest, plan = h(r, d - size, j - 1)
                total = t + once(l, r, s) + rest
                if total < out[0]:
                    out = (total, ((l, r, s, k), *plan))
        return out

    return h


def plan_stages(graph: OpGraph, mesh: LogicalMesh, num_microbatches: int, memory_bytes: float, *,
                merge: bool = True, time_limit_s: float = 60.0) -> PipelinePlan:
    """Stages and submeshes for `graph` traced at the micro-batch size."""
    started = time.perf_counter()
    scopes = list(dict.fromkeys(op.scope for op in graph.ops if op.scope is not None))
    if not scopes:
        raise PlanError("the model has no repeated layers to cut into pipeline stages; drop --microbatches")
    num_layers = len(scopes)
    first_scoped = next(i for i, op in enumerate(graph.ops) if op.scope is not None)
    position = {}
    for i, op in enumerate(graph.ops):
        position[op.name] = scopes.index(op.scope) if op.scope is not None else (-1 if i < first_scoped else num_layers)
    shapes = submesh_shapes(mesh.shape)
    sizes = [math.prod(s) for s in shapes]
    uniform = num_layer_classes(layer_representatives(graph), graph)[1] == 1
    boundary = graph.by_name[next(op.name for op in reversed(graph.ops) if op.scope == scopes[0])]
    solved: dict[tuple[object, ...], StageCost] = {}

    def ilp_cost(l: int, r: int, s: int) -> StageCost:
        key: tuple[object, ...] = (r - l, l == 0, r == num_layers, s) if uniform else (l, r, s)
        if key in solved:
            return solved[key]

        def include(op: Op) -> bool:
            p = position[op.name]
            return l <= p < r or (p == -1 and l == 0) or (p == num_layers and r == num_layers)

        sub = mesh.submesh(shapes[s])
        problem = build_problem(graph, sub, merge=merge, include=include)
        try:
            sol = solve_ilp(problem, memory_bytes, time_limit_s)
        except PlanError:
            solved[key] = StageCost(INF, 0.0, INF, INF)
            return solved[key]
        weight = float(sum(g.weight_bytes[k] for g, k in zip(problem.groups, sol.choice)))
        act = float(sum(g.act_bytes[k] for g, k in zip(problem.groups, sol.choice)))
        send = 0.0
        if r < num_layers:  # activation out, its gradient back; each device sends its share
            nbytes = boundary.out_bytes / sizes[s]
            crosses = sizes[s] >= mesh.links.gpus_per_node
            send = 2.0 * float(p2p_time(np.asarray(nbytes), np.asarray(crosses), mesh.links))
        sync = sum(g.count * c.seconds for g, k in zip(problem.groups, sol.choice) for m in g.members
                   for c in g.costs[m][k].comm if c.why == "weight gradient")
        solved[key] = StageCost(sol.objective_s - sync + send, sync, weight, act)
        return solved[key]

    def cost(l: int, r: int, s: int, k: int) -> float:
        c = ilp_cost(l, r, s)
        return c.time_s if c.weight_bytes + k * c.act_bytes <= memory_bytes else INF

    total, plan = stage_dp(num_layers, mesh.num_devices, sizes, num_microbatches, cost,
                           lambda l, r, s: ilp_cost(l, r, s).sync_s)
    if total == INF:
        raise PlanError(f"no pipeline of {num_layers} layers on the {'x'.join(map(str, mesh.shape))} mesh fits "
                        f"{memory_bytes / 1e9:,.2f} GB per device with {num_microbatches} micro-batches; raise "
                        "--memory, use fewer micro-batches in flight or a larger mesh")
    stages = []
    for l, r, s, k in plan:
        c = ilp_cost(l, r, s)
        stages.append(Stage(first_layer=l, last_layer=r - 1, submesh=shapes[s], time_s=c.time_s, grad_sync_s=c.sync_s,
                            memory_bytes=c.weight_bytes + k * c.act_bytes, in_flight=k))
    return PipelinePlan(num_microbatches=num_microbatches, stages=stages, step_time_s=total, stage_ilps=len(solved),
                        seconds=time.perf_counter() - started)
