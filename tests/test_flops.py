"""FLOP counts, derived by hand."""

from __future__ import annotations

import pytest

from meshplan.cost import flops as F
from meshplan.specs import load_model


def test_llama2_7b_model_flops_per_token_by_hand() -> None:
    m = load_model("Llama-2-7B")
    # One layer's GEMMs, forward: 2 x (4·h² attention + 3·h·f SwiGLU) = 2 x (67,108,864 + 135,266,304) = 404,750,336
    # 32 layers: 12,952,010,752; LM head 2·V·h = 2·32000·4096 = 262,144,000
    # attention core at s=4096, full (PaLM): 32 layers x 2·s·(q_dim + v_dim) = 32·2·4096·8192 = 2,147,483,648
    # forward 15,361,638,400; x3 for forward + backward = 46,084,915,200
    assert F.model_flops_per_token(m, 4096) == 46_084_915_200


def test_model_flops_close_to_6n_plus_attention() -> None:
    """PaLM App. B: 6N + 12·L·H·Q·T, with N the non-embedding parameters plus the LM head."""
    m = load_model("Llama-3.1-70B")
    n = m.total_params() - m.embedding_params()
    palm = 6 * n + 12 * m.num_layers * m.num_heads * m.head_dim * 8192
    assert F.model_flops_per_token(m, 8192) == pytest.approx(palm, rel=0.001)  # norms are the difference


def test_causal_kernels_halve_attention_core() -> None:
    m = load_model("Llama-3.1-8B")
    assert F.attention_core_flops_per_token(m, 8192, True) * 2 == F.attention_core_flops_per_token(m, 8192, False)


def test_moe_counts_topk_experts_only() -> None:
    m = load_model("Mixtral-8x7B")
    dense, moe = F.layer_gemm_flops_per_token(m)
    assert dense == 0.0
    # attention 2·(h·(q+2kv) + q·h) = 2·(4096·6144 + 4096·4096) = 83,886,080; router 2·h·E = 65,536;
    # 2 experts x 2·3·h·f = 2·6·4096·14336 = 704,643,072
    assert moe == 83_886_080 + 65_536 + 704_643_072
    # active parameters x 2 agrees (norms excluded, embedding excluded, head separate)
    per_layer_active = (m.active_params() - m.embedding_params() - m.lm_head_params()) / m.num_layers
    assert moe == pytest.approx(2 * per_layer_active, rel=1e-3)
