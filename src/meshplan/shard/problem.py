"""The intra-operator sharding problem: one choice per group, its costs, and the resharding costs on the edges.

Built from an `OpGraph` on a `LogicalMesh`: groups from `simplify.group_ops`, merged across identical layers
(`simplify.layer_representatives`), each group's strategies those of its leader, each member's layout derived
from the leader's. Costs are per device and per training step, in seconds and bytes, with every merged copy
counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from meshplan.shard.graph import Op, OpGraph
from meshplan.shard.mesh import LogicalMesh
from meshplan.shard.simplify import Grouping, group_ops, layer_representatives
from meshplan.shard.strategies import (
    Assign,
    Collective,
    OpCost,
    Spec,
    derive,
    evaluate,
    leader_assignments,
    reshard,
    reshard_seconds,
    spec_of,
)


@dataclass
class GroupVars:
    """One group of the ILP (a representative of `count` identical groups) and its strategies."""

    leader: str
    members: list[str]
    count: int
    assigns: dict[str, list[Assign]] = field(default_factory=dict)
    """Member -> its assignment under each of the group's strategies."""
    specs: dict[str, list[Spec]] = field(default_factory=dict)
    """Member -> its output layout under each strategy."""
    costs: dict[str, list[OpCost]] = field(default_factory=dict)
    """Member -> its cost under each strategy (one copy; `count` copies are in the arrays below)."""
    time_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    weight_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    act_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    reshard_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Resharding inside the group (a member reading another member in a layout it cannot take), all copies."""

    @property
    def num_strategies(self) -> int:
        return len(self.assigns[self.leader])


@dataclass
class Use:
    """Operand `operand` of `consumer` reads `producer`, `count` times over the merged copies."""

    consumer: str
    operand: int
    producer: str
    count: int


@dataclass
class EdgeVars:
    """Resharding seconds between two groups: cost_s[i, j] when the producer group takes strategy i and the
    consumer group strategy j."""

    src: int
    dst: int
    cost_s: np.ndarray
    uses: list[Use]


@dataclass
class ShardingProblem:
    graph: OpGraph
    mesh: LogicalMesh
    groups: list[GroupVars]
    edges: list[EdgeVars]
    rep: dict[str, str]
    grouping: Grouping
    self_uses: list[tuple[int, Use]]
    """Cross-copy edges whose two ends merge into the same group (layer i's output read by layer i+1)."""
    build_s: float = 0.0

    def group_of(self, name: str) -> GroupVars:
        return self.groups[self._index[self.grouping.leader_of[name]]]

    def __post_init__(self) -> None:
        self._index = {g.leader: i for i, g in enumerate(self.groups)}


def _member_specs(graph: OpGraph, g: GroupVars, mesh: LogicalMesh, needs_grad: Callable[[str], bool]) -> np.ndarray:
    """Fill the group's assignments, layouts and costs; return the intra-group resharding seconds per strategy."""
    lead = graph.by_name[g.leader]
    assigns = leader_assignments(lead, mesh)
    extra = np.zeros(len(assigns))
    g.assigns = {name: [] for name in g.members}
    g.specs = {name: [] for name in g.members}
    g.costs = {name: [] for name in g.members}
    for k, assign in enumerate(assigns):
        for name in g.members:
            op = graph.by_name[name]
            gathers: list[Collective] = []
            if name != g.leader:
                main = op.main_operand()
                assign, gathers = derive(op, g.specs[op.operands[main].ref][k], mesh)  # type: ignore[index]
            cost = evaluate(op, assign, mesh, needs_grad)
            cost.comm.extend(gathers)
            for i, o in enumerate(op.operands):
                if name != g.leader and i == op.main_operand() or o.kind != "act" or o.ref not in g.specs:
                    continue
                extra[k] += reshard_seconds(g.specs[o.ref][k], spec_of(o.labels, assign), o, needs_grad(o.ref), mesh)
            g.assigns[name].append(assign)
            g.specs[name].append(spec_of(op.out_labels, assign))
            g.costs[name].append(cost)
    return extra


def build_problem(graph: OpGraph, mesh: LogicalMesh, *, merge: bool = True,
                  include: Callable[[Op], bool] | None = None) -> ShardingProblem:
    """The ILP's data for the operators `include` accepts (all by default), identical layers merged if asked."""
    started = time.perf_counter()
    rep = layer_representatives(graph) if merge else {op.name: op.name for op in graph.ops}
    grouping = group_ops(graph)
    kept = [op for op in graph.ops if include is None or include(op)]
    kept_names = {op.name for op in kept}

    def needs_grad(name: str) -> bool:
        return graph.by_name[name].requires_grad

    counts: dict[str, int] = {}
    for op in kept:
        if grouping.leader_of[op.name] == op.name:
            counts[rep[op.name]] = counts.get(rep[op.name], 0) + 1
    groups = []
    for leader, count in counts.items():
        g = GroupVars(leader=leader, members=grouping.members[leader], count=count)
        extra = _member_specs(graph, g, mesh, needs_grad)
        k = g.num_strategies
        g.time_s = count * (extra + np.array([sum(g.costs[m][i].time_s for m in g.members) for i in range(k)]))
        g.weight_bytes = count * np.array([sum(g.costs[m][i].weight_bytes for m in g.members) for i in range(k)])
        g.act_bytes = count * np.array([sum(g.costs[m][i].act_bytes for m in g.members) for i in range(k)])
        g.reshard_s = count * extra
        groups.append(g)
    index = {g.leader: i for i, g in enumerate(groups)}

    uses: dict[tuple[str, int, str], int] = {}
    for op in kept:
        for i, o in enumerate(op.operands):
            if o.kind != "act" or o.ref not in kept_names:
                continue
            if grouping.leader_of[o.ref] == grouping.leader_of[op.name]:
                continue  # derived from the leader, or priced inside the group
            key = (rep[op.name], i, rep[o.ref])
            uses[key] = uses.get(key, 0) + 1
    edges: dict[tuple[int, int], EdgeVars] = {}
    self_uses = []
    for (consumer, i, producer), count in uses.items():
        gp, gc = index[grouping.leader_of[producer]], index[grouping.leader_of[consumer]]
        o = graph.by_name[consumer].operands[i]
        src, dst = groups[gp].specs[producer], groups[gc].assigns[consumer]
        grad = needs_grad(producer)
        matrix = np.array([[reshard_seconds(s, spec_of(o.labels, a), o, grad, mesh) for a in dst] for s in src])
        use = Use(consumer, i, producer, count)
        if gp == gc:  # a copy's output read by the next copy of the same group: both take the same strategy
            groups[gp].time_s = groups[gp].time_s + count * np.diag(matrix)
            groups[gp].reshard_s = groups[gp].reshard_s + count * np.diag(matrix)
            self_uses.append((gp, use))
            continue
        edge = edges.setdefault((gp, gc), EdgeVars(gp, gc, np.zeros_like(matrix), []))
        edge.cost_s = edge.cost_s + count * matrix
        edge.uses.append(use)
    kept_edges = [e for e in edges.values() if np.any(e.cost_s > 0)]
    return ShardingProblem(graph, mesh, groups, kept_edges, rep, grouping, self_uses,
                           build_s=time.perf_counter() - started)


def use_collectives(problem: ShardingProblem, use: Use, src_k: int, dst_k: int) -> list:
    """The resharding collectives of one use under the chosen strategies (one copy)."""
    g_src, g_dst = problem.group_of(use.producer), problem.group_of(use.consumer)
    o = problem.graph.by_name[use.consumer].operands[use.operand]
    dst = spec_of(o.labels, g_dst.assigns[use.consumer][dst_k])
    return list(reshard(g_src.specs[use.producer][src_k], dst, o.shape, o.dtype_bytes,
                        problem.graph.by_name[use.producer].requires_grad, problem.mesh))
