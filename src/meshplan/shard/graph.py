"""The operator graph: every tensor operation of a traced module, its shapes and its einsum-style dim labels.

Each operator reads operands and writes one tensor. Every tensor dim carries a *label*; a dim of an operand
and a dim of the output that share a label are the same index of the computation (a batch, row or column dim
of a matmul, an aligned dim of an element-wise op). A label present in an operand but absent from the output
is *reduced* (a matmul's contraction dim, a mean's dim): sharding it leaves partial sums that need a reduction.
A label in `fixed` may not carry a mesh axis (a softmax's dim, a sliced dim, a broadcast dim of size 1).

Plain data, no torch: the tracer (`meshplan.shard.trace`) builds it, the strategies read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

OperandKind = Literal["act", "param", "const"]

# Operator kinds. Leaders choose a strategy of their own; the others follow their main operand (Alpa §4.1
# merges element-wise operators into their producers the same way) unless that lies in another layer.
LEADER_KINDS = frozenset({"input", "linear", "matmul", "embedding", "attention"})
VIEW_KINDS = frozenset({"view"})  # aliasing layout ops: no compute, no stored activation


@dataclass(frozen=True)
class Operand:
    """One tensor an operator reads: another operator's output (`act`), a parameter, or a constant (a tensor
    that does not depend on the inputs, such as rotary tables: replicated everywhere, free)."""

    kind: OperandKind
    ref: str
    """Producer operator name (act), parameter name (param), or '' (const)."""
    shape: tuple[int, ...]
    labels: tuple[str, ...]
    dtype_bytes: int


@dataclass(frozen=True)
class Op:
    """One operator of the graph."""

    name: str
    kind: str
    """input, linear, matmul, embedding, attention, elementwise, reduction, view, opaque."""
    target: str
    """What it calls, for display: `nn.Linear`, `mul`, `view`, `scaled_dot_product_attention`."""
    module: str
    """Qualified name of the innermost module that issued it ('' for the top level)."""
    scope: str | None
    """The repeated layer it belongs to (`layers.3`), or None outside repeated layers."""
    shape: tuple[int, ...]
    dtype_bytes: int
    requires_grad: bool
    """Floating-point output: gradients flow back through it."""
    operands: tuple[Operand, ...]
    out_labels: tuple[str, ...]
    fixed: frozenset[str]
    flops: float
    """Forward FLOPs of the whole (unsharded) operator."""
    bytes_moved: float
    """Forward HBM traffic of the whole operator, bytes (operands read + output written)."""

    @property
    def out_bytes(self) -> float:
        return float(math.prod(self.shape)) * self.dtype_bytes

    @property
    def is_leader_kind(self) -> bool:
        return self.kind in LEADER_KINDS

    def main_operand(self) -> int | None:
        """Index of the first activation operand, the one a follower takes its layout from."""
        return next((i for i, o in enumerate(self.operands) if o.kind == "act"), None)

    def label_sizes(self) -> dict[str, int]:
        """Each label's size: the smallest dim carrying it (a reshape's outer dims must both divide)."""
        sizes: dict[str, int] = {}
        for labels, shape in [(o.labels, o.shape) for o in self.operands] + [(self.out_labels, self.shape)]:
            for label, size in zip(labels, shape):
                sizes[label] = min(size, sizes.get(label, size))
        return sizes


@dataclass
class OpGraph:
    """Operators in topological order, and the parameters they read (name -> shape, bytes per element)."""

    ops: list[Op]
    params: dict[str, tuple[tuple[int, ...], int]] = field(default_factory=dict)
    trace_s: float = 0.0
    """Seconds the trace took (symbolic trace + shape propagation)."""

    def __post_init__(self) -> None:
        self.by_name = {op.name: op for op in self.ops}

    def consumers(self) -> dict[str, list[tuple[Op, int]]]:
        """Producer name -> (consumer, operand index) pairs."""
        out: dict[str, list[tuple[Op, int]]] = {op.name: [] for op in self.ops}
        for op in self.ops:
            for i, o in enumerate(op.operands):
                if o.kind == "act":
                    out[o.ref].append((op, i))
        return out

    @property
    def num_params(self) -> int:
        return sum(math.prod(shape) for shape, _ in self.params.values())

    def total_flops(self) -> float:
        return sum(op.flops for op in self.ops)
