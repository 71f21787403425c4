"""Sharding strategies of one operator on a logical mesh and what each one costs.

A strategy *assigns* each mesh axis to at most one label of the operator (or to none: replicated along that
axis). Every tensor's layout (`Spec`: the mesh axes sharding each of its dims) follows from the assignment.
For a linear layer `x[b,s,k] · W[n,k] -> y[b,s,n]` on a 1D mesh that gives Alpa's einsum strategies:
replicate, shard the batch (b or s: data parallel), the column (n: column-parallel), or the contraction
(k: row-parallel, the output holds partial sums that an all-reduce completes).

Costs of one training step, per device:
- compute: the roofline time of the operator's share, forward and backward (backward = 2 x forward FLOPs,
  Narayanan et al. 2021, eq. 3);
- forward partial sums: an axis on a reduced label leaves partial outputs, completed by an all-reduce
  (Megatron's row-parallel g operator; Shoeybi et al. 2019, §3);
- backward partial input gradients: an axis on a label an activation operand lacks (the column of a
  column-parallel layer) leaves that operand's gradient partial: an all-reduce in backward (Megatron's f);
- weight gradients: an axis on a label the weight lacks (the batch) gives each rank a partial weight
  gradient: an all-reduce (data parallelism);
- memory: weights with their gradients and Adam states, 16 bytes per parameter element whatever the dtype
  (ZeRO, Rajbhandari et al. 2020, §3: 2+2+12 in mixed precision; 4+4+8 in fp32), over their shards; every
  non-view output kept for backward (an upper bound: fused kernels keep less).
- resharding between a producer's layout and the layout its consumer needs, per axis (see `reshard`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from meshplan.shard.graph import VIEW_KINDS, Op, Operand
from meshplan.shard.mesh import LogicalMesh

Assign = tuple[str | None, ...]
"""Per mesh axis: the label it shards, or None."""
Spec = tuple[tuple[int, ...], ...]
"""Per tensor dim: the mesh axes that shard it (empty: replicated along every axis)."""

TRAIN_PASSES = 3.0  # forward + backward, the backward costing twice the forward (Narayanan et al. 2021, eq. 3)
STATE_BYTES_PER_PARAM = 16.0  # bytes per parameter element: weight + gradient + Adam m, v and master (ZeRO §3)


@dataclass(frozen=True)
class Collective:
    """One collective of a training step, along one mesh axis."""

    kind: str
    """all-reduce, all-gather or all-to-all."""
    axis: int
    nbytes: float
    """Bytes per rank (the full buffer of the collective)."""
    seconds: float
    why: str
    """partial sums, input gradient, weight gradient, or reshard."""


@dataclass
class OpCost:
    """What one operator costs per device under one strategy, for one training step."""

    compute_s: float
    comm: list[Collective] = field(default_factory=list)
    weight_bytes: float = 0.0
    act_bytes: float = 0.0

    @property
    def comm_s(self) -> float:
        return sum(c.seconds for c in self.comm)

    @property
    def time_s(self) -> float:
        return self.compute_s + self.comm_s

    @property
    def memory_bytes(self) -> float:
        return self.weight_bytes + self.act_bytes


def spec_of(labels: tuple[str, ...], assign: Assign) -> Spec:
    return tuple(tuple(a for a, label in enumerate(assign) if label == dim_label) for dim_label in labels)


def local_numel(shape: tuple[int, ...], spec: Spec, mesh_shape: tuple[int, ...]) -> float:
    shards = math.prod(mesh_shape[a] for axes in spec for a in axes)
    return math.prod(shape) / shards


def _axis_dim(spec: Spec, axis: int) -> int | None:
    return next((d for d, axes in enumerate(spec) if axis in axes), None)


@lru_cache(maxsize=200_000)
def reshard(src: Spec, dst: Spec, shape: tuple[int, ...], dtype_bytes: int, grad: bool,
            mesh: LogicalMesh) -> tuple[Collective, ...]:
    """Collectives that turn layout `src` into `dst`, axis by axis, forward and (when gradients flow) backward:
    sharded -> replicated is an all-gather (its backward is a local slice); replicated -> sharded is a local
    slice (its backward an all-gather of the gradient); one dim -> another is an all-to-all both ways."""
    out = []
    for axis in range(len(mesh.shape)):
        a, b = _axis_dim(src, axis), _axis_dim(dst, axis)
        if a == b:
            continue
        if b is None:
            nbytes = local_numel(shape, dst, mesh.shape) * dtype_bytes
            out.append(Collective("all-gather", axis, nbytes, mesh.all_gather(nbytes, axis), "reshard"))
        elif a is None:
            if grad:
                nbytes = local_numel(shape, src, mesh.shape) * dtype_bytes
                out.append(Collective("all-gather", axis, nbytes, mesh.all_gather(nbytes, axis), "reshard (backward)"))
        else:
            nbytes = local_numel(shape, src, mesh.shape) * dtype_bytes
            passes = 2.0 if grad else 1.0
            out.append(Collective("all-to-all", axis, nbytes, passes * mesh.all_to_all(nbytes, axis), "reshard"))
    return tuple(out)


def reshard_seconds(src: Spec, dst: Spec, operand: Operand, grad: bool, mesh: LogicalMesh) -> float:
    if src == dst:
        return 0.0
    return sum(c.seconds for c in reshard(src, dst, operand.shape, operand.dtype_bytes, grad, mesh))


def leader_assignments(op: Op, mesh: LogicalMesh) -> list[Assign]:
    """Every assignment of mesh axes to the operator's shardable labels whose shard counts divide the dims
    (an axis of size 1 stays unassigned)."""
    sizes = op.label_sizes()
    seen: dict[str, None] = {}
    for label in op.out_labels + tuple(lb for o in op.operands for lb in o.labels):
        if label not in op.fixed and sizes[label] > 1:
            seen.setdefault(label)
    if op.kind == "input":  # data can be loaded in any layout of its own dims
        seen = {lb: None for lb in op.out_labels if sizes[lb] > 1}
    choices = [[None] + list(seen) if n > 1 else [None] for n in mesh.shape]
    out = []
    for assign in itertools.product(*choices):
        shards: dict[str, int] = {}
        for axis, chosen in enumerate(assign):
            if chosen is not None:
                shards[chosen] = shards.get(chosen, 1) * mesh.shape[axis]
        if all(sizes[lb] % n == 0 for lb, n in shards.items()):
            out.append(tuple(assign))
    return out


def derive(op: Op, main_spec: Spec, mesh: LogicalMesh) -> tuple[Assign, list[Collective]]:
    """A follower's assignment from its main operand's layout: each axis keeps the label of the dim it shards,
    unless that label is fixed here or does not divide (then the operand is all-gathered along that axis)."""
    main = op.operands[op.main_operand()]  # type: ignore[index]
    sizes = op.label_sizes()
    assign: list[str | None] = [None] * len(mesh.shape)
    dropped: list[int] = []
    for d, axes in enumerate(main_spec):
        label = main.labels[d]
        n = math.prod(mesh.shape[a] for a in axes)
        for a in axes:
            if label in op.fixed or sizes[label] % n:
                dropped.append(a)
            else:
                assign[a] = label
    gathers = []
    if dropped:
        kept = spec_of(main.labels, tuple(assign))
        nbytes = local_numel(main.shape, kept, mesh.shape) * main.dtype_bytes
        for a in dropped:
            gathers.append(Collective("all-gather", a, nbytes, mesh.all_gather(nbytes, a), "reshard"))
    return tuple(assign), gathers


def evaluate(op: Op, assign: Assign, mesh: LogicalMesh, needs_grad: Callable[[str], bool]) -> OpCost:
    """Compute, collectives and memory of `op` under `assign` (see the module docstring for each term)."""
    split = math.prod(mesh.shape[a] for a, label in enumerate(assign) if label is not None)
    compute = 0.0 if op.kind == "input" else TRAIN_PASSES * mesh.device.op_time(op.flops / split, op.bytes_moved / split)
    cost = OpCost(compute)
    out_spec = spec_of(op.out_labels, assign)
    out_bytes = local_numel(op.shape, out_spec, mesh.shape) * op.dtype_bytes
    for axis, label in enumerate(assign):
        if label is None:
            continue
        if label not in op.out_labels:
            cost.comm.append(Collective("all-reduce", axis, out_bytes, mesh.all_reduce(out_bytes, axis), "partial sums"))
        for o in op.operands:
            if label in o.labels:
                continue
            nbytes = local_numel(o.shape, spec_of(o.labels, assign), mesh.shape) * o.dtype_bytes
            if o.kind == "act" and needs_grad(o.ref):
                cost.comm.append(Collective("all-reduce", axis, nbytes, mesh.all_reduce(nbytes, axis), "input gradient"))
            elif o.kind == "param":
                cost.comm.append(Collective("all-reduce", axis, nbytes, mesh.all_reduce(nbytes, axis), "weight gradient"))
    for o in op.operands:
        if o.kind == "param":
            cost.weight_bytes += local_numel(o.shape, spec_of(o.labels, assign), mesh.shape) * STATE_BYTES_PER_PARAM
    if op.kind not in VIEW_KINDS and op.requires_grad:
        cost.act_bytes = out_bytes
    return cost


def describe(op: Op, assign: Assign) -> str:
    """A strategy in words, per axis: `S(batch)@0 S(column)@1`, or `replicated`."""
    if all(label is None for label in assign):
        return "replicated"
    role = label_roles(op)
    return " ".join(f"{role.get(label, 'dim')}@{axis}" for axis, label in enumerate(assign) if label is not None)


def label_roles(op: Op) -> dict[str, str]:
    """Names for an operator's labels: batch/seq/hidden of activations, column/row of weights, heads."""
    roles: dict[str, str] = {}
    weight = next((o for o in op.operands if o.kind == "param" and len(o.shape) == 2), None)
    if weight is not None:
        n, k = weight.labels
        roles[n], roles[k] = ("vocab", "hidden") if op.kind == "embedding" else ("column", "row")
    if op.kind == "attention" and len(op.out_labels) == 4:
        names = ["batch", "heads", "seq", "head_dim"]
    elif op.kind == "matmul":
        names = ["batch", "heads"][: len(op.out_labels) - 2] + ["row", "column"]
        roles.setdefault(op.operands[0].labels[-1], "contraction")
    else:
        names = ["batch", "seq", "hidden"] if len(op.out_labels) == 3 else ["batch", "seq"] if len(op.out_labels) == 2 \
            else [f"dim{d}" for d in range(len(op.out_labels))]
    for label, name in zip(op.out_labels, names):
        roles.setdefault(label, name)
    for o in op.operands:  # reduced labels of element-wise ops and reductions
        for d, label in enumerate(o.labels):
            roles.setdefault(label, f"reduced dim{d}")
    return roles
