"""Tracing modules into operator graphs on meta tensors (tier 2: single-process torch)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from shard_models import HfDecoder, on_meta

from meshplan.errors import PlanError
from meshplan.run.plan_run import tiny_model
from meshplan.shard.simplify import group_ops, layer_representatives, num_layer_classes
from meshplan.shard.trace import _Labels, _reshape_labels, trace_decoder, trace_module
from meshplan.specs import load_model
from meshplan.strategy import Strategy


def test_run_decoder_traces_with_its_parameters_and_matmul_flops() -> None:
    spec = tiny_model(Strategy(dp=1))  # 4 layers, hidden 64, 4 heads / 2 KV heads of 16, ffn 128, vocab 256
    batch, seq = 2, 16
    g = trace_decoder(spec, batch, seq, "float32")
    assert g.num_params == spec.total_params()
    linears = [op for op in g.ops if op.kind == "linear"]
    assert len(linears) == 4 * spec.num_layers + 1  # wqkv, wo, w13, w2 per layer + LM head
    # A linear layer costs 2 FLOPs per weight per token: 2 * tokens * (weights of every linear layer).
    weights = sum(math.prod(o.shape) for op in linears for o in op.operands if o.kind == "param")
    assert sum(op.flops for op in linears) == 2 * batch * seq * weights
    # Causal attention: (2·s·t·d for QKᵀ + 2·s·t·d for P·V) per head, halved by the causal mask.
    attn = [op for op in g.ops if op.kind == "attention"]
    assert len(attn) == spec.num_layers
    assert attn[0].flops == 0.5 * 4 * batch * spec.num_heads * seq * seq * spec.head_dim
    assert {op.scope for op in g.ops} == {None} | {f"layers.{i}" for i in range(spec.num_layers)}


def test_seventy_billion_traces_without_weights() -> None:
    spec = load_model("Llama-3.1-70B")
    g = trace_decoder(spec, 1, 8192)
    assert g.num_params == spec.total_params()  # 70.55B parameters, none allocated (meta tensors)
    rep = layer_representatives(g)
    assert num_layer_classes(rep, g) == (80, 1)


def test_hugging_face_style_module_traces_and_merges() -> None:
    model = on_meta(HfDecoder, 1000, 64, 4, 3, 32)
    g = trace_module(model, (torch.zeros(2, 32, dtype=torch.long, device="meta"),))
    kinds = {op.kind for op in g.ops}
    assert {"input", "embedding", "linear", "matmul", "elementwise", "view"} <= kinds
    assert sum(op.kind == "matmul" for op in g.ops) == 2 * 3  # QKᵀ and P·V per layer
    assert num_layer_classes(layer_representatives(g), g) == (3, 1)
    # The causal-mask buffer does not depend on the input: a constant, not an operator.
    masked = [op for op in g.ops if op.target == "masked_fill"]
    assert masked and all(o.kind in ("act", "const") for op in masked for o in op.operands)


def test_reshape_labels_share_the_outer_dim_of_each_group() -> None:
    # (8, 32, 128) -> (8, 32, 2, 4, 16): 128 splits into 2 x 4 x 16; a contiguous shard of 128 is a shard of 2.
    ins, outs, fixed = _reshape_labels((8, 32, 128), (8, 32, 2, 4, 16), _Labels("v"))
    assert ins[0] == outs[0] and ins[1] == outs[1] and ins[2] == outs[2]
    assert outs[3] in fixed and outs[4] in fixed and ins[2] not in fixed


def test_followers_join_their_producers_group_within_a_layer() -> None:
    g = trace_decoder(tiny_model(Strategy(dp=1)), 2, 16, "float32")
    grouping = group_ops(g)
    for op in g.ops:
        lead = g.by_name[grouping.leader_of[op.name]]
        assert lead.scope == op.scope  # groups never span layers
        if op.kind in ("linear", "attention", "embedding", "input"):
            assert lead is op


def test_untraceable_module_is_a_clear_error() -> None:
    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(PlanError, match="cannot be traced by torch.fx"):
        trace_module(DataDependent(), (torch.zeros(2, device="meta"),))
