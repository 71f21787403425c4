"""`shard(request)`: trace the model, build the sharding problem, solve the ILP, and report the plan as data."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from meshplan.errors import PlanError
from meshplan.shard.graph import OpGraph
from meshplan.shard.ilp import DEFAULT_TIME_LIMIT_S, IlpSolution, solve_ilp
from meshplan.shard.mesh import LogicalMesh
from meshplan.shard.problem import ShardingProblem, build_problem, use_collectives
from meshplan.shard.simplify import num_layer_classes
from meshplan.shard.strategies import Collective, describe, label_roles, reshard, spec_of
from meshplan.specs.base import Frozen
from meshplan.specs.gpu import GpuSpec
from meshplan.specs.model import ModelSpec

TORCH_DTYPE = {"bf16": "bfloat16", "fp32": "float32"}


class ShardRequest(Frozen):
    """What to shard, on which mesh, for which batch."""

    model: ModelSpec
    gpu: GpuSpec
    """The device every mesh point is (its FLOP/s, HBM, links)."""
    mesh: tuple[int, ...]
    """Logical mesh axis sizes, outermost first, e.g. (2, 4)."""
    global_batch: int = Field(gt=0)
    """Sequences per step, on the whole mesh."""
    seq_len: int = Field(gt=0)
    """Tokens per sequence."""
    dtype: Literal["bf16", "fp32"] = "bf16"
    """Activation and weight dtype of the traced model."""
    memory_bytes: float | None = Field(default=None, gt=0)
    """Per-device memory bound in bytes (None: the GPU's HBM)."""
    gpus_per_node: int | None = Field(default=None, gt=0)
    """Devices per NVLink domain (None: the GPU's usual system)."""
    merge_layers: bool = True
    """Solve identical layers once (every copy takes the same strategy)."""
    time_limit_s: float = Field(default=DEFAULT_TIME_LIMIT_S, gt=0)
    """Seconds HiGHS may search."""


class CollectiveUse(Frozen):
    """One kind of collective of a step, summed over the operators that issue it."""

    kind: str
    axis: int
    why: str
    count: int
    """Collectives per step."""
    bytes_per_step: float
    """Bytes per rank per step, all of them together."""
    seconds: float


class OpChoice(Frozen):
    """The strategy chosen for one leading operator (and its followers)."""

    name: str
    module: str
    scope: str | None
    kind: str
    target: str
    shape: tuple[int, ...]
    copies: int
    """Identical operators (one per merged layer) that take this strategy."""
    strategy: str
    """Per axis, the dim it shards (e.g. `column@0`), or `replicated`."""
    axes: tuple[str | None, ...]
    """Per mesh axis, the role of the label it shards (None: replicated along it)."""
    followers: int
    """Operators that take their layout from this one (element-wise, views)."""
    time_s: float
    """Compute and collectives of this operator and its followers, one copy."""


class ShardResult(Frozen):
    """The sharding plan: a strategy per operator, the collectives of a step, predicted time and memory."""

    request: ShardRequest
    num_ops: int
    num_groups: int
    """Groups after following (one ILP choice each) before merging."""
    num_layers: int
    num_layer_classes: int
    """Distinct layers after merging identical ones (1 for a uniform decoder)."""
    ops: list[OpChoice]
    collectives: list[CollectiveUse]
    compute_s: float
    comm_s: float
    """Collectives the operators' strategies imply (partial sums, gradients)."""
    reshard_s: float
    """Collectives between operators whose layouts differ."""
    step_time_s: float
    """compute + comm + reshard, nothing overlapped."""
    weight_bytes: float
    """Weights, gradients and optimizer states per device."""
    act_bytes: float
    """Activations kept for backward per device."""
    memory_bytes: float
    memory_bound_bytes: float
    param_specs: dict[str, tuple[int | None, ...]]
    """Parameter -> per mesh axis, the parameter dim it is sharded on (None: replicated)."""
    input_axes: tuple[str | None, ...]
    """Per mesh axis, how the model input is split (`batch`, `seq`) or None."""
    ilp: dict[str, float | int | bool]
    trace_s: float


def trace_request(req: ShardRequest, batch: int | None = None) -> OpGraph:
    from meshplan.shard.trace import trace_decoder

    return trace_decoder(req.model, batch or req.global_batch, req.seq_len, TORCH_DTYPE[req.dtype])


def shard(req: ShardRequest, graph: OpGraph | None = None) -> ShardResult:
    """The optimal intra-operator sharding of the request's model (traced unless `graph` is given)."""
    if req.global_batch < 1 or math.prod(req.mesh) < 1:
        raise PlanError("global_batch and the mesh must be positive")
    graph = graph or trace_request(req)
    mesh = LogicalMesh.build(req.mesh, req.gpu, dtype=req.dtype, gpus_per_node=req.gpus_per_node)
    problem = build_problem(graph, mesh, merge=req.merge_layers)
    bound = req.memory_bytes if req.memory_bytes is not None else req.gpu.hbm_bytes
    solution = solve_ilp(problem, bound, req.time_limit_s)
    return summarise(req, problem, solution, bound)


def _collectives(problem: ShardingProblem, choice: tuple[int, ...]) -> tuple[list[tuple[Collective, int]], float]:
    """Every collective of the step with its number of copies, and the resharding seconds."""
    out: list[tuple[Collective, int]] = []
    for g, k in zip(problem.groups, choice):
        for m in g.members:
            out.extend((c, g.count) for c in g.costs[m][k].comm)
    reshard_s = float(sum(g.reshard_s[k] for g, k in zip(problem.groups, choice)))
    uses = [(e.src, e.dst, u) for e in problem.edges for u in e.uses]
    uses += [(gi, gi, u) for gi, u in problem.self_uses]
    for src, dst, use in uses:
        for c in use_collectives(problem, use, choice[src], choice[dst]):
            out.append((c, use.count))
            reshard_s += c.seconds * use.count
    # intra-group resharding: a member reading another member of its group (priced in reshard_s above)
    for g, k in zip(problem.groups, choice):
        for m in g.members:
            op = problem.graph.by_name[m]
            for i, o in enumerate(op.operands):
                skip = m != g.leader and i == op.main_operand()
                if skip or o.kind != "act" or o.ref not in g.specs:
                    continue
                wanted = spec_of(o.labels, g.assigns[m][k])
                for c in reshard(g.specs[o.ref][k], wanted, o.shape, o.dtype_bytes,
                                 problem.graph.by_name[o.ref].requires_grad, problem.mesh):
                    out.append((c, g.count))
    return out, reshard_s


def summarise(req: ShardRequest, problem: ShardingProblem, sol: IlpSolution, bound: float) -> ShardResult:
    graph = problem.graph
    choice = sol.choice
    ops = []
    compute = comm = 0.0
    for g, k in zip(problem.groups, choice):
        lead = graph.by_name[g.leader]
        roles = label_roles(lead)
        assign = g.assigns[g.leader][k]
        t = sum(g.costs[m][k].time_s for m in g.members)
        compute += g.count * sum(g.costs[m][k].compute_s for m in g.members)
        comm += g.count * sum(g.costs[m][k].comm_s for m in g.members)
        ops.append(OpChoice(name=lead.name, module=lead.module, scope=lead.scope, kind=lead.kind, target=lead.target,
                            shape=lead.shape, copies=g.count, strategy=describe(lead, assign),
                            axes=tuple(roles.get(a) if a else None for a in assign), followers=len(g.members) - 1,
                            time_s=t))
    collected, reshard_s = _collectives(problem, choice)
    summary: dict[tuple[str, int, str], list[float]] = {}
    for c, count in collected:
        why = "reshard" if c.why.startswith("reshard") else c.why
        row = summary.setdefault((c.kind, c.axis, why), [0, 0.0, 0.0])
        row[0] += count
        row[1] += count * c.nbytes
        row[2] += count * c.seconds
    collectives = [CollectiveUse(kind=k, axis=a, why=w, count=int(v[0]), bytes_per_step=v[1], seconds=v[2])
                   for (k, a, w), v in sorted(summary.items(), key=lambda kv: -kv[1][2])]
    weight = float(sum(g.weight_bytes[k] for g, k in zip(problem.groups, choice)))
    act = float(sum(g.act_bytes[k] for g, k in zip(problem.groups, choice)))
    layers, classes = num_layer_classes(problem.rep, graph)
    step = compute + comm + reshard_s
    return ShardResult(request=req, num_ops=len(graph.ops), num_groups=len(problem.grouping.members),
                       num_layers=layers, num_layer_classes=classes, ops=ops, collectives=collectives,
                       compute_s=compute, comm_s=comm, reshard_s=reshard_s, step_time_s=step, weight_bytes=weight,
                       act_bytes=act, memory_bytes=weight + act, memory_bound_bytes=bound,
                       param_specs=param_specs(problem, choice), input_axes=_input_axes(problem, choice),
                       ilp={"variables": sol.num_vars, "binary": sol.num_binary, "constraints": sol.num_constraints,
                            "build_s": problem.build_s + sol.build_s, "solve_s": sol.solve_s, "optimal": sol.optimal,
                            "objective_s": sol.objective_s},
                       trace_s=graph.trace_s)


def param_specs(problem: ShardingProblem, choice: tuple[int, ...]) -> dict[str, tuple[int | None, ...]]:
    """Every parameter's layout: the dim each mesh axis shards, from the chosen strategy of the operator
    that reads it (a merged layer's parameters take their representative's layout)."""
    out: dict[str, tuple[int | None, ...]] = {}
    chosen = {g.leader: k for g, k in zip(problem.groups, choice)}
    for op in problem.graph.ops:
        rep = problem.graph.by_name[problem.rep[op.name]]
        lead = problem.grouping.leader_of[rep.name]
        if lead not in chosen:
            continue
        g = problem.group_of(rep.name)
        assign = g.assigns[rep.name][chosen[lead]]
        for o, twin in zip(op.operands, rep.operands):  # labels are per operator: read the twin's
            if o.kind == "param":
                spec = spec_of(twin.labels, assign)
                out[o.ref] = tuple(next((d for d, axes in enumerate(spec) if a in axes), None)
                                   for a in range(len(problem.mesh.shape)))
    return out


def _input_axes(problem: ShardingProblem, choice: tuple[int, ...]) -> tuple[str | None, ...]:
    for g, k in zip(problem.groups, choice):
        op = problem.graph.by_name[g.leader]
        if op.kind == "input":
            roles = label_roles(op)
            return tuple(roles.get(a) if a else None for a in g.assigns[g.leader][k])
    return tuple(None for _ in problem.mesh.shape)

