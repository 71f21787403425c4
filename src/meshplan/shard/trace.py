"""Trace a PyTorch module into an `OpGraph`: `torch.fx` symbolic trace, then shape propagation on meta tensors,
so that a 70B model is traced without allocating its weights.

Each fx node that computes a tensor from the inputs becomes an `Op` with einsum-style labels (see
`meshplan.shard.graph`). Tensors that do not depend on the inputs (rotary tables, masks built from `arange`)
are constants; shape arithmetic is dropped. An operation without a rule here is kept as an opaque operator
whose operands and output are replicated: correct, only pessimistic.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.fx.proxy import TraceError

from meshplan.errors import PlanError
from meshplan.shard.graph import Op, Operand, OpGraph

ELEMENTWISE = {"add", "sub", "mul", "truediv", "div", "neg", "pow", "rsqrt", "sqrt", "exp", "log", "tanh", "silu",
               "gelu", "relu", "sigmoid", "float", "to", "type_as", "contiguous", "clone", "dropout", "cos", "sin",
               "masked_fill", "where", "abs", "square", "half", "bfloat16", "iadd", "imul", "getitem_chunk"}
ACTIVATION_MODULES = (nn.GELU, nn.SiLU, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Identity)
REDUCTIONS = {"mean", "sum", "amax"}
SOFTMAX = {"softmax", "log_softmax"}
VIEWS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze"}
PERMUTES = {"transpose", "permute", "t"}
TUPLE_SPLITS = {"chunk", "split", "unbind"}
CAUSAL_FRACTION = 0.5  # causal attention computes half of the score matrix (FlashAttention-2, Dao 2023 §3.1)


def _name(target: Any) -> str:
    if isinstance(target, str):
        return target
    return getattr(target, "__name__", str(target))


def _arg(node: fx.Node, index: int, key: str, default: Any = None) -> Any:
    """An argument of an fx call, given by position or by keyword."""
    return node.kwargs.get(key, node.args[index] if len(node.args) > index else default)


class _Labels:
    """Fresh label names for one node."""

    def __init__(self, node: str) -> None:
        self.node, self.count = node, 0

    def __call__(self) -> str:
        self.count += 1
        return f"{self.node}:{self.count}"


def _reshape_labels(a: tuple[int, ...], b: tuple[int, ...], new: _Labels) -> tuple[list[str], list[str], set[str]]:
    """Labels of a reshape from shape `a` to `b`: dims are grouped where their products match; the outer dims of
    each group share a label (a contiguous shard of one is a contiguous shard of the other), the rest are fixed."""
    la, lb = [new() for _ in a], [new() for _ in b]
    fixed = set(la) | set(lb)
    ia = [i for i, s in enumerate(a) if s != 1]
    ib = [j for j, s in enumerate(b) if s != 1]
    i = j = 0
    while i < len(ia) and j < len(ib):
        gi, gj = [ia[i]], [ib[j]]
        pa, pb = a[ia[i]], b[ib[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(ia):
                pa *= a[ia[i]]
                gi.append(ia[i])
                i += 1
            elif pb < pa and j < len(ib):
                pb *= b[ib[j]]
                gj.append(ib[j])
                j += 1
            else:
                break
        lb[gj[0]] = la[gi[0]]
        fixed.discard(la[gi[0]])
    return la, lb, fixed


def _index_labels(shape: tuple[int, ...], index: Any, new: _Labels) -> tuple[list[str], list[str], set[str]] | None:
    """Labels of basic indexing `x[index]`: full slices keep their dim's label, partial slices fix it, ints drop
    it, None inserts a dim. None for advanced (tensor) indexing."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(it, (fx.Node, torch.Tensor, list)) for it in items):
        return None
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    expanded: list[Any] = []
    for it in items:
        if it is Ellipsis:
            expanded.extend([slice(None)] * (len(shape) - consumed))
        else:
            expanded.append(it)
    expanded.extend([slice(None)] * (len(shape) - sum(1 for it in expanded if it is not None)))
    ins = [new() for _ in shape]
    outs: list[str] = []
    fixed: set[str] = set()
    dim = 0
    for it in expanded:
        if it is None:
            outs.append(new())
            fixed.add(outs[-1])
            continue
        if isinstance(it, slice):
            if it != slice(None):
                fixed.add(ins[dim])
            outs.append(ins[dim])
        else:  # an int drops the dim
            fixed.add(ins[dim])
        dim += 1
    return ins, outs, fixed


class _Tracer:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.params = dict(gm.named_parameters())
        self.ops: list[Op] = []
        self.act: set[str] = set()
        self.tuples: dict[str, tuple[fx.Node, int]] = {}  # chunk/split node -> (source, dim)
        self.used_params: dict[str, tuple[tuple[int, ...], int]] = {}

    # --- operands ---------------------------------------------------------------------------------------------
    def _meta(self, node: fx.Node) -> Any:
        return node.meta.get("tensor_meta")

    def _is_tensor(self, node: Any) -> bool:
        return isinstance(node, fx.Node) and hasattr(self._meta(node), "shape")

    def _operand(self, node: fx.Node, labels: list[str] | tuple[str, ...]) -> Operand:
        meta = self._meta(node)
        shape = tuple(int(s) for s in meta.shape)
        itemsize = meta.dtype.itemsize
        if node.name in self.act:
            return Operand("act", node.name, shape, tuple(labels), itemsize)
        if node.op == "get_attr" and node.target in self.params:
            self.used_params[str(node.target)] = (shape, itemsize)
            return Operand("param", str(node.target), shape, tuple(labels), itemsize)
        return Operand("const", "", shape, tuple(labels), itemsize)

    def _param(self, qualname: str, labels: list[str]) -> Operand:
        p = self.params[qualname]
        shape = tuple(int(s) for s in p.shape)
        self.used_params[qualname] = (shape, p.dtype.itemsize)
        return Operand("param", qualname, shape, tuple(labels), p.dtype.itemsize)

    # --- op construction -------------------------------------------------------------------------------------
    def _emit(self, node: fx.Node, kind: str, target: str, operands: list[Operand], out_labels: list[str],
              fixed: set[str], flops: float | None = None, moved: float | None = None) -> None:
        meta = self._meta(node)
        shape = tuple(int(s) for s in meta.shape)
        numel = float(math.prod(shape))
        out_bytes = numel * meta.dtype.itemsize
        if flops is None:  # element-wise and reductions: one FLOP per element of the largest tensor
            flops = 0.0 if kind == "view" else max([numel] + [float(math.prod(o.shape)) for o in operands])
        if moved is None:  # read the activations, write the output (views move nothing)
            moved = 0.0 if kind == "view" else out_bytes + sum(
                math.prod(o.shape) * o.dtype_bytes for o in operands if o.kind != "const")
        stack = list(node.meta.get("nn_module_stack", {}).values())
        paths = [str(v[0]) for v in stack]
        scope = next((p for p in paths if p.split(".")[-1].isdigit()), None)
        module = str(node.target) if node.op == "call_module" else (paths[-1] if paths else "")
        self.ops.append(Op(name=node.name, kind=kind, target=target, module=module, scope=scope, shape=shape,
                           dtype_bytes=meta.dtype.itemsize, requires_grad=meta.dtype.is_floating_point,
                           operands=tuple(operands), out_labels=tuple(out_labels), fixed=frozenset(fixed),
                           flops=flops, bytes_moved=moved))
        self.act.add(node.name)

    def _elementwise(self, node: fx.Node, inputs: list[fx.Node], kind: str = "elementwise",
                     fixed_out_dims: tuple[int, ...] = ()) -> None:
        new = _Labels(node.name)
        out_shape = tuple(self._meta(node).shape)
        out = [new() for _ in out_shape]
        fixed = {out[d % len(out)] for d in fixed_out_dims} if out else set()
        operands = []
        for x in inputs:
            shape = tuple(self._meta(x).shape)
            offset = len(out_shape) - len(shape)
            labels = []
            for j, size in enumerate(shape):
                if offset + j >= 0 and size == out_shape[offset + j]:
                    labels.append(out[offset + j])
                else:
                    labels.append(new())
                    fixed.add(labels[-1])
            operands.append(self._operand(x, labels))
        self._emit(node, kind, _name(node.target), operands, out, fixed)

    def _tensor_args(self, node: fx.Node) -> list[fx.Node]:
        flat: list[Any] = []
        for a in list(node.args) + list(node.kwargs.values()):
            flat.extend(a if isinstance(a, (list, tuple)) else [a])
        return [a for a in flat if self._is_tensor(a)]

    def _depends_on_input(self, node: fx.Node) -> bool:
        flat: list[Any] = []
        for a in list(node.args) + list(node.kwargs.values()):
            flat.extend(a if isinstance(a, (list, tuple)) else [a])
        return any(isinstance(a, fx.Node) and (a.name in self.act or a.name in self.tuples) for a in flat)

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            if self._is_tensor(node):
                new = _Labels(node.name)
                labels = [new() for _ in self._meta(node).shape]
                self._emit(node, "input", "input", [], labels, set(), 0.0, 0.0)
            return
        if node.op in ("get_attr", "output") or not self._depends_on_input(node):
            return
        name = _name(node.target)
        if node.op == "call_module":
            self._module(node, self.modules[str(node.target)])
            return
        if name in TUPLE_SPLITS:
            self.tuples[node.name] = (_arg(node, 0, "input"), int(_arg(node, 2, "dim", 0)))
            return
        if not self._is_tensor(node):
            return
        args: Any = node.args
        if name == "getitem" and isinstance(args[0], fx.Node) and args[0].name in self.tuples:
            source, dim = self.tuples[args[0].name]
            self._elementwise(node, [source], kind="view", fixed_out_dims=(dim,))
            self.ops[-1] = _fix_operand_dim(self.ops[-1], dim)
        elif name == "getitem":
            self._getitem(node)
        elif name in VIEWS:
            self._reshape(node)
        elif name in PERMUTES:
            self._permute(node)
        elif name == "expand":
            self._elementwise(node, [args[0]], kind="view")
        elif name == "repeat_interleave":
            self._repeat_interleave(node)
        elif name in ("stack", "cat"):
            self._concat(node, name)
        elif name in ELEMENTWISE:
            self._elementwise(node, self._tensor_args(node))
        elif name in SOFTMAX:
            self._elementwise(node, [args[0]], fixed_out_dims=(int(_arg(node, 1, "dim", -1)),))
        elif name in REDUCTIONS:
            self._reduction(node)
        elif name in ("layer_norm", "rms_norm"):
            shape = _arg(node, 1, "normalized_shape")
            self._norm(node, args[0], len(shape), list(self._tensor_args(node)[1:]))
        elif name == "linear":
            self._linear(node, args[0], [self._operand(a, []) for a in self._tensor_args(node)[1:]])
        elif name in ("matmul", "bmm"):
            self._matmul(node)
        elif name == "embedding":
            self._embedding(node, args[0], self._operand(args[1], []))
        elif name == "scaled_dot_product_attention":
            self._attention(node)
        else:
            self._opaque(node)

    # --- rules ---------------------------------------------------------------------------------------------------
    def _module(self, node: fx.Node, mod: nn.Module) -> None:
        x: Any = node.args[0]
        if isinstance(mod, nn.Linear):
            ops = [self._param(f"{node.target}.weight", [])]
            if mod.bias is not None:
                ops.append(self._param(f"{node.target}.bias", []))
            self._linear(node, x, ops, "nn.Linear")
        elif isinstance(mod, nn.Embedding):
            self._embedding(node, x, self._param(f"{node.target}.weight", []), "nn.Embedding")
        elif isinstance(mod, (nn.LayerNorm, nn.RMSNorm)):
            params = [self._param(f"{node.target}.{p}", []) for p, v in mod.named_parameters(recurse=False)]
            self._norm(node, x, len(mod.normalized_shape), [], params, type(mod).__name__)
        elif isinstance(mod, ACTIVATION_MODULES):
            self._elementwise(node, [x])
            self.ops[-1] = _retarget(self.ops[-1], type(mod).__name__)
        elif isinstance(mod, nn.Softmax):
            self._elementwise(node, [x], fixed_out_dims=(mod.dim if mod.dim is not None else -1,))
        else:
            self._opaque(node)

    def _getitem(self, node: fx.Node) -> None:
        x = node.args[0]
        assert isinstance(x, fx.Node)
        labels = _index_labels(tuple(self._meta(x).shape), node.args[1], _Labels(node.name))
        if labels is None:
            self._opaque(node)
            return
        ins, outs, fixed = labels
        self._emit(node, "view", "getitem", [self._operand(x, ins)], outs, fixed)

    def _reshape(self, node: fx.Node) -> None:
        x = node.args[0]
        assert isinstance(x, fx.Node)
        ins, outs, fixed = _reshape_labels(tuple(self._meta(x).shape), tuple(self._meta(node).shape), _Labels(node.name))
        self._emit(node, "view", _name(node.target), [self._operand(x, ins)], outs, fixed)

    def _permute(self, node: fx.Node) -> None:
        x = node.args[0]
        assert isinstance(x, fx.Node)
        nd = len(self._meta(x).shape)
        new = _Labels(node.name)
        ins = [new() for _ in range(nd)]
        name = _name(node.target)
        args: Any = node.args
        if name == "permute":
            dims = args[1] if isinstance(args[1], (list, tuple)) else args[1:]
            order = [int(d) % nd for d in dims]
        else:
            d0, d1 = (int(args[1]) % nd, int(args[2]) % nd) if name == "transpose" else (0, 1)
            order = list(range(nd))
            order[d0], order[d1] = order[d1], order[d0]
        self._emit(node, "view", name, [self._operand(x, ins)], [ins[d] for d in order], set())

    def _repeat_interleave(self, node: fx.Node) -> None:
        # Repeating rows of dim d in place: a contiguous shard of d before is the matching shard after.
        x = node.args[0]
        assert isinstance(x, fx.Node)
        new = _Labels(node.name)
        labels = [new() for _ in self._meta(x).shape]
        self._emit(node, "elementwise", "repeat_interleave", [self._operand(x, labels)], labels, set())

    def _concat(self, node: fx.Node, name: str) -> None:
        tensors = [t for t in _arg(node, 0, "tensors") if self._is_tensor(t)]
        out_nd = len(self._meta(node).shape)
        dim = int(_arg(node, 1, "dim", 0)) % out_nd
        new = _Labels(node.name)
        out = [new() for _ in range(out_nd)]
        fixed = {out[dim]}
        operands = []
        for t in tensors:
            if name == "stack":
                labels = out[:dim] + out[dim + 1:]
            else:
                labels = list(out)
                labels[dim] = new()
                fixed.add(labels[dim])
            operands.append(self._operand(t, labels))
        self._emit(node, "elementwise", name, operands, out, fixed)

    def _reduction(self, node: fx.Node) -> None:
        x = node.args[0]
        assert isinstance(x, fx.Node)
        nd = len(self._meta(x).shape)
        dim = _arg(node, 1, "dim")
        keep = bool(_arg(node, 2, "keepdim", False))
        dims = set(range(nd)) if dim is None else {int(d) % nd for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
        new = _Labels(node.name)
        ins = [new() for _ in range(nd)]
        out = [new() if d in dims else ins[d] for d in range(nd) if keep or d not in dims]
        self._emit(node, "reduction", _name(node.target), [self._operand(x, ins)], out, set())

    def _norm(self, node: fx.Node, x: fx.Node, normalized: int, extra: list[fx.Node],
              params: list[Operand] | None = None, target: str | None = None) -> None:
        new = _Labels(node.name)
        labels = [new() for _ in self._meta(x).shape]
        fixed = set(labels[-normalized:])
        operands = [self._operand(x, labels)] + [self._operand(e, labels[-normalized:]) for e in extra]
        for p in params or []:
            operands.append(Operand(p.kind, p.ref, p.shape, tuple(labels[-len(p.shape):]), p.dtype_bytes))
        self._emit(node, "elementwise", target or _name(node.target), operands, labels, fixed)

    def _linear(self, node: fx.Node, x: fx.Node, weights: list[Operand], target: str = "linear") -> None:
        new = _Labels(node.name)
        x_shape = tuple(self._meta(x).shape)
        lead = [new() for _ in x_shape[:-1]]
        k, n = new(), new()
        w = weights[0]
        operands = [self._operand(x, lead + [k]), Operand(w.kind, w.ref, w.shape, (n, k), w.dtype_bytes)]
        if len(weights) > 1:
            b = weights[1]
            operands.append(Operand(b.kind, b.ref, b.shape, (n,), b.dtype_bytes))
        out_shape = tuple(self._meta(node).shape)
        flops = 2.0 * math.prod(out_shape) * x_shape[-1]  # multiply-add per output element per input feature
        self._emit(node, "linear", target, operands, lead + [n], set(), flops, None)

    def _matmul(self, node: fx.Node) -> None:
        a, b = node.args[0], node.args[1]
        assert isinstance(a, fx.Node) and isinstance(b, fx.Node)
        sa, sb, so = (tuple(self._meta(t).shape) for t in (a, b, node))
        if len(sa) < 2 or len(sb) < 2:
            self._opaque(node)
            return
        new = _Labels(node.name)
        out = [new() for _ in so]
        m, n, k = out[-2], out[-1], new()
        fixed: set[str] = set()

        def batch_labels(shape: tuple[int, ...]) -> list[str]:
            offset = len(so) - len(shape)
            labels = []
            for j, size in enumerate(shape[:-2]):
                if size == so[offset + j]:
                    labels.append(out[offset + j])
                else:
                    labels.append(new())
                    fixed.add(labels[-1])
            return labels

        operands = [self._operand(a, batch_labels(sa) + [m, k]), self._operand(b, batch_labels(sb) + [k, n])]
        flops = 2.0 * math.prod(so) * sa[-1]
        self._emit(node, "matmul", "matmul", operands, out, fixed, flops, None)

    def _embedding(self, node: fx.Node, idx: fx.Node, w: Operand, target: str = "embedding") -> None:
        new = _Labels(node.name)
        lead = [new() for _ in self._meta(idx).shape]
        v, h = new(), new()
        operands = [self._operand(idx, lead), Operand(w.kind, w.ref, w.shape, (v, h), w.dtype_bytes)]
        out_bytes = math.prod(self._meta(node).shape) * self._meta(node).dtype.itemsize
        self._emit(node, "embedding", target, operands, lead + [h], set(), 0.0, 2.0 * out_bytes)

    def _attention(self, node: fx.Node) -> None:
        q, k, v = node.args[:3]
        mask = node.kwargs.get("attn_mask", node.args[3] if len(node.args) > 3 else None)
        causal = bool(node.kwargs.get("is_causal", False))
        assert isinstance(q, fx.Node) and isinstance(k, fx.Node) and isinstance(v, fx.Node)
        so = tuple(self._meta(node).shape)
        new = _Labels(node.name)
        out = [new() for _ in so]
        s, f, t, e = out[-2], out[-1], new(), new()
        fixed = {s, f, t, e}
        nd = len(so)

        def labels(x: fx.Node, tail: list[str]) -> list[str]:
            shape = tuple(self._meta(x).shape)
            offset = nd - len(shape)
            lead = []
            for j, size in enumerate(shape[:-2]):
                if size == so[offset + j]:
                    lead.append(out[offset + j])
                else:
                    lead.append(new())
                    fixed.add(lead[-1])
            return lead + tail

        operands = [self._operand(q, labels(q, [s, e])), self._operand(k, labels(k, [t, e])),
                    self._operand(v, labels(v, [t, f]))]
        if isinstance(mask, fx.Node) and self._is_tensor(mask):
            operands.append(self._operand(mask, labels(mask, [s, t])))
        sq, sk = self._meta(q).shape, self._meta(k).shape
        batch = math.prod(so[:-2])
        # QKᵀ and P·V: 2·s·t·e + 2·s·t·f FLOPs per (batch, head), halved for a causal mask
        flops = 2.0 * batch * sq[-2] * sk[-2] * (sq[-1] + so[-1]) * (CAUSAL_FRACTION if causal else 1.0)
        self._emit(node, "attention", "scaled_dot_product_attention", operands, out, fixed, flops, None)

    def _opaque(self, node: fx.Node) -> None:
        new = _Labels(node.name)
        operands = []
        for x in self._tensor_args(node):
            labels = [new() for _ in self._meta(x).shape]
            operands.append(self._operand(x, labels))
        out = [new() for _ in self._meta(node).shape]
        fixed = set(out) | {label for o in operands for label in o.labels}
        self._emit(node, "opaque", _name(node.target), operands, out, fixed)


def _retarget(op: Op, target: str) -> Op:
    from dataclasses import replace

    return replace(op, target=target)


def _fix_operand_dim(op: Op, dim: int) -> Op:
    """A chunk of a split: the split dim of its source is fixed too."""
    from dataclasses import replace

    src = op.operands[0]
    return replace(op, fixed=op.fixed | {src.labels[dim % len(src.labels)]})


def trace_module(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> OpGraph:
    """The operator graph of `module` called on `example_inputs` (meta tensors keep it weightless)."""
    started = time.perf_counter()
    try:
        gm = fx.symbolic_trace(module)
        ShapeProp(gm).propagate(*example_inputs)
    except (TraceError, TypeError, ValueError, RuntimeError, AttributeError, NotImplementedError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PlanError(f"{type(module).__name__} cannot be traced by torch.fx ({first}); remove data-dependent "
                        "control flow from its forward") from None
    tracer = _Tracer(gm)
    for node in gm.graph.nodes:
        tracer.visit(node)
    return OpGraph(ops=tracer.ops, params=tracer.used_params, trace_s=time.perf_counter() - started)


def trace_decoder(spec: Any, batch: int, seq_len: int, dtype: str = "bfloat16") -> OpGraph:
    """The operator graph of `meshplan.run`'s Llama-style decoder for `spec`, built on the meta device."""
    from meshplan.run.model import Decoder, check_executable

    check_executable(spec)
    with torch.device("meta"):
        model = Decoder(spec).to(getattr(torch, dtype))
        tokens = torch.zeros(batch, seq_len, dtype=torch.long)
    return trace_module(model, (tokens,))

