"""Graph simplification that keeps the ILP small.

1. Following (Alpa §4.1): an operator that is not a leader (matmul, linear, embedding, attention, input) takes
   its layout from its main operand, so it joins the producer's *group* and adds no variable. A follower whose
   main operand lies in another layer leads a group of its own, so that groups never span layers.
2. Merging identical layers: layers whose operators match one for one (kinds, targets, shapes, wiring) form a
   class; every group of a class takes the strategy of the class's first layer. The ILP then has the variables
   of one layer per class, the costs of all of them (Alpa's and AutoParallel's layer-repetition trick).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshplan.shard.graph import OpGraph


@dataclass
class Grouping:
    """Operator -> the leader of its group, and each leader's members (leader first, topological order)."""

    leader_of: dict[str, str]
    members: dict[str, list[str]]


def group_ops(graph: OpGraph) -> Grouping:
    leader_of: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for op in graph.ops:
        main = op.main_operand()
        lead = op.name
        if not op.is_leader_kind and main is not None:
            producer = graph.by_name[op.operands[main].ref]
            if producer.scope == op.scope:
                lead = leader_of[producer.name]
        leader_of[op.name] = lead
        members.setdefault(lead, []).append(op.name)
    return Grouping(leader_of, members)


def _signature(graph: OpGraph, names: list[str], position: dict[str, int]) -> tuple[object, ...]:
    sig = []
    for name in names:
        op = graph.by_name[name]
        wiring: list[tuple[object, ...]] = []
        for o in op.operands:
            if o.kind != "act":
                wiring.append((o.kind, o.shape))
                continue
            producer = graph.by_name[o.ref]
            same = producer.scope == op.scope  # inputs from outside the layer may differ (the first layer's)
            wiring.append(("act", same, position[o.ref] if same else None, o.shape))
        sig.append((op.kind, op.target, op.shape, op.dtype_bytes, tuple(wiring)))
    return tuple(sig)


def layer_representatives(graph: OpGraph) -> dict[str, str]:
    """Operator -> the operator it is merged with (itself outside repeated layers or in a class's first layer)."""
    scopes: dict[str, list[str]] = {}
    for op in graph.ops:
        if op.scope is not None:
            scopes.setdefault(op.scope, []).append(op.name)
    position = {name: i for names in scopes.values() for i, name in enumerate(names)}
    first_of: dict[tuple[object, ...], str] = {}
    rep = {op.name: op.name for op in graph.ops}
    for scope, names in scopes.items():
        first = first_of.setdefault(_signature(graph, names, position), scope)
        if first != scope:
            for name, twin in zip(names, scopes[first]):
                rep[name] = twin
    return rep


def num_layer_classes(rep: dict[str, str], graph: OpGraph) -> tuple[int, int]:
    """(layers, distinct layer classes) of a merge."""
    scopes = {op.scope for op in graph.ops if op.scope is not None}
    kept = {graph.by_name[r].scope for r in rep.values() if graph.by_name[r].scope is not None}
    return len(scopes), len(kept)
