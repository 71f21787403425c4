"""The model presets added for the serving data: each has the parameter count its authors published."""

from __future__ import annotations

import pytest

from meshplan.specs.catalog import load_model, model_catalog

B = 1e9

# name: (published total, rel. tolerance, published active or None, rel. tolerance, source)
PUBLISHED: dict[str, tuple[float, float, float | None, float, str]] = {
    # Llama-3.1-70B architecture
    "Llama-3.3-70B": (70.6 * B, 0.005, None, 0, "Llama-3.3-70B-Instruct checkpoint, 70.6B"),
    # Qwen3-32B model card: "Number of Parameters: 32.8B; Number of Paramaters (Non-Embedding): 31.2B".
    "Qwen3-32B": (32.8 * B, 0.005, None, 0, "Qwen3-32B model card: 32.8B"),
    # Mistral-7B-v0.1 checkpoint: 7.24B (Mistral AI's announcement rounds to 7.3B, 1% above).
    "Mistral-7B": (7.24 * B, 0.005, None, 0, "Mistral-7B-v0.1 checkpoint, 7.24B"),
    # Same architecture as DeepSeek-V3; 671B excludes the 14B multi-token-prediction module.
    "DeepSeek-R1": (671.0 * B, 0.005, 37.0 * B, 0.02, "DeepSeek-R1 model card: 671B total, 37B activated"),
    # Meta's 109B includes the ~0.87B vision encoder and projector (34-layer ViT, width 1408) that the text-only
    # preset leaves out (107.8B), hence 1.5 %.
    "Llama-4-Scout-17B-16E": (109.0 * B, 0.015, 17.0 * B, 0.02, "Meta model card: 109B total, 17B active"),
}

# gpt-oss model card (OpenAI 2025), parameter table: 116.83B total, 5.13B active per token. The active figure
# leaves out the input-embedding lookup (it counts the unembedding), which active_params() includes (0.58B).
GPT_OSS_TOTAL, GPT_OSS_ACTIVE_WITHOUT_EMBEDDING, GPT_OSS_TOL = 116.83 * B, 5.13 * B, 0.02


def _rel(actual: float, expected: float) -> float:
    return abs(actual - expected) / expected


def test_new_presets_are_in_the_catalog() -> None:
    assert set(PUBLISHED) | {"gpt-oss-120b"} <= set(model_catalog())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_published(name: str) -> None:
    total, total_tol, active, active_tol, source = PUBLISHED[name]
    model = model_catalog()[name]
    assert _rel(model.total_params(), total) <= total_tol, (
        f"{name}: {model.total_params():,} vs {total:,.0f} ({source})"
    )
    if active is None:
        assert not model.is_moe
        assert model.active_params() == model.total_params()
    else:
        assert model.is_moe
        assert _rel(model.active_params(), active) <= active_tol, (
            f"{name}: active {model.active_params():,} vs {active:,.0f} ({source})"
        )


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
