"""The model presets added for the serving data: architecture facts beyond the parameter counts, which
`test_model_catalog.py` checks for every preset."""

from __future__ import annotations

import pytest

from meshplan.specs.catalog import load_model, model_catalog

B = 1e9

# gpt-oss model card (OpenAI 2025), parameter table: 116.83B total, 5.13B active per token. The active figure
# leaves out the input-embedding lookup (it counts the unembedding), which active_params() includes (0.58B).
GPT_OSS_TOTAL, GPT_OSS_ACTIVE_WITHOUT_EMBEDDING, GPT_OSS_TOL = 116.83 * B, 5.13 * B, 0.02


def _rel(actual: float, expected: float) -> float:
    return abs(actual - expected) / expected


def test_gpt_oss_120b_matches_the_model_card_within_2_percent() -> None:
    model = model_catalog()["gpt-oss-120b"]
    assert _rel(model.total_params(), GPT_OSS_TOTAL) <= GPT_OSS_TOL
    active = model.active_params() - model.embedding_params()
    assert _rel(active, GPT_OSS_ACTIVE_WITHOUT_EMBEDDING) <= GPT_OSS_TOL
    # 36 MoE layers of 128 experts, top-4; biases on attention, experts and router; untied embeddings
    assert (model.num_moe_layers, model.num_experts, model.moe_topk) == (36, 128, 4)
    assert model.linear_bias and model.router_bias and not model.tied_embeddings


def test_llama_33_70b_is_the_llama_31_70b_architecture() -> None:
    a, b = model_catalog()["Llama-3.3-70B"], model_catalog()["Llama-3.1-70B"]
    assert a.model_dump(exclude={"name"}) == b.model_dump(exclude={"name"})


def test_deepseek_r1_is_the_deepseek_v3_architecture() -> None:
    a, b = model_catalog()["DeepSeek-R1"], model_catalog()["DeepSeek-V3"]
    assert a.model_dump(exclude={"name"}) == b.model_dump(exclude={"name"})
    assert a.mla is not None and a.router_bias and a.num_dense_layers == 3


def test_scout_layer_pattern_is_all_moe_with_a_shared_expert() -> None:
    scout = model_catalog()["Llama-4-Scout-17B-16E"]
    assert scout.num_moe_layers == scout.num_layers == 48  # interleave_moe_layer_step 1
    assert (scout.num_experts, scout.moe_topk, scout.num_shared_experts) == (16, 1, 1)
    assert not scout.qk_norm  # Llama-4's L2 QK norm has no weights


def test_maverick_is_not_a_preset() -> None:
    """Llama-4-Maverick alternates dense and MoE layers (interleave_moe_layer_step 2): not representable."""
    assert "Llama-4-Maverick-17B-128E" not in model_catalog()


@pytest.mark.parametrize("name", ["llama-3.3-70b", "QWEN3-32B", "mistral 7b", "deepseek-r1", "gpt-oss-120b"])
def test_new_presets_load_by_name(name: str) -> None:
    assert load_model(name).name.lower().replace(" ", "-") == name.lower().replace(" ", "-")
