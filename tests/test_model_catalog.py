"""The model presets: every one validates, is found by name, and has the parameter count its authors published."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from meshplan.errors import PlanError
from meshplan.specs.catalog import load_model, model_catalog
from meshplan.specs.model import ModelSpec

B = 1e9

# name: (published total, relative tolerance, published active or None, its tolerance, source)
PUBLISHED: dict[str, tuple[float, float, float | None, float, str]] = {
    # Brown et al. 2020, Table 2.1: nominal sizes (the table rounds; 50257-token vocabulary, 2048 learned positions).
    "GPT-3-1.3B": (1.3 * B, 0.03, None, 0, "Brown et al. 2020 Table 2.1 (nominal)"),
    "GPT-3-2.7B": (2.7 * B, 0.03, None, 0, "Brown et al. 2020 Table 2.1 (nominal)"),
    "GPT-3-6.7B": (6.7 * B, 0.03, None, 0, "Brown et al. 2020 Table 2.1 (nominal)"),
    "GPT-3-13B": (13.0 * B, 0.03, None, 0, "Brown et al. 2020 Table 2.1 (nominal)"),
    "GPT-3-175B": (175.0 * B, 0.03, None, 0, "Brown et al. 2020 Table 2.1 (nominal)"),
    "MT-NLG-530B": (530.0 * B, 0.01, None, 0, "Smith et al. 2022"),
    # Narayanan et al. 2021 Table 1 lists 1008B for this configuration; the model is known as "1T".
    "Megatron-1T": (1.0e12, 0.03, None, 0, "Narayanan et al. 2021 Table 1"),
    "Llama-2-7B": (6.74 * B, 0.005, None, 0, "Llama-2-7b-hf checkpoint, 6.74B"),
    "Llama-2-13B": (13.0 * B, 0.005, None, 0, "Llama-2-13b-hf checkpoint, 13.0B"),
    # The "70B" of the name is nominal: the checkpoint holds 68.98B parameters.
    "Llama-2-70B": (68.98 * B, 0.005, None, 0, "Llama-2-70b-hf checkpoint, 69.0B"),
    "Llama-3.1-8B": (8.03 * B, 0.005, None, 0, "Llama-3.1-8B checkpoint, 8.03B"),
    "Llama-3.1-70B": (70.6 * B, 0.005, None, 0, "Llama-3.1-70B checkpoint, 70.6B"),
    "Llama-3.1-405B": (405.9 * B, 0.005, None, 0, "Llama-3.1-405B checkpoint, 406B"),
    "Mixtral-8x7B": (46.7 * B, 0.005, 12.9 * B, 0.01, "Mistral AI: 46.7B total, 12.9B active"),
    "Mixtral-8x22B": (141.0 * B, 0.005, 39.0 * B, 0.01, "Mistral AI: 141B total, 39B active"),
    "Qwen2.5-7B": (7.61 * B, 0.005, None, 0, "Qwen2.5 model card: 7.61B"),
    "Qwen2.5-72B": (72.7 * B, 0.005, None, 0, "Qwen2.5 model card: 72.7B"),
    "Qwen3-30B-A3B": (30.5 * B, 0.005, 3.3 * B, 0.02, "Qwen3 model card: 30.5B total, 3.3B activated"),
    "Qwen3-235B-A22B": (235.0 * B, 0.005, 22.0 * B, 0.01, "Qwen3 model card: 235B total, 22B activated"),
    # 671B excludes the 14B multi-token-prediction module; "37B activated" is rounded (37.55B with embeddings).
    "DeepSeek-V3": (671.0 * B, 0.005, 37.0 * B, 0.02, "DeepSeek-V3 report: 671B total, 37B activated"),
    # Parker et al. 2024 call it a "15-billion-parameter" model; the rounded figure gets a wide tolerance.
    "Nemotron-4-15B": (15.0 * B, 0.05, None, 0, "Nemotron-4 15B report (rounded)"),
    "Nemotron-4-340B": (341.0 * B, 0.005, None, 0, "Nemotron-4 340B report: 341B"),
    "BLOOM-176B": (176.2 * B, 0.005, None, 0, "BigScience BLOOM: 176,247,271,424"),
    "OPT-175B": (175.0 * B, 0.005, None, 0, "Zhang et al. 2022"),
    "Llama-3.3-70B": (70.6 * B, 0.005, None, 0, "Llama-3.3-70B-Instruct checkpoint, 70.6B"),
    "Qwen3-32B": (32.8 * B, 0.005, None, 0, "Qwen3-32B model card: 32.8B"),
    "Mistral-7B": (7.24 * B, 0.005, None, 0, "Mistral-7B-v0.1 checkpoint, 7.24B"),
    "DeepSeek-R1": (671.0 * B, 0.005, 37.0 * B, 0.02, "DeepSeek-R1: 671B total, 37B activated"),
    "Llama-4-Scout-17B-16E": (109.0 * B, 0.015, 17.0 * B, 0.02, "Meta: 109B total (incl. ~0.87B vision), 17B active"),
    "gpt-oss-120b": (116.83 * B, 0.005, 5.71 * B, 0.01, "model card 116.83B; 5.13B active + 0.58B input embedding"),
}


def _rel(actual: int, expected: float) -> float:
    return abs(actual - expected) / expected


def test_every_required_preset_is_in_the_catalog() -> None:
    assert set(PUBLISHED) <= set(model_catalog())


def test_every_preset_has_a_published_figure() -> None:
    """A new preset comes with a check of its parameter count here."""
    missing = set(model_catalog()) - set(PUBLISHED)
    assert not missing, f"add the published parameter count of {sorted(missing)} to PUBLISHED"


def test_preset_files_are_named_after_their_model() -> None:
    folder = resources.files("meshplan") / "data" / "models"
    for entry in folder.iterdir():
        if not entry.name.endswith(".json"):
            continue
        spec = ModelSpec.model_validate_json(entry.read_text(encoding="utf-8"))
        assert entry.name == f"{spec.name.lower()}.json"
        # a preset carries only ModelSpec fields (extra="forbid" rejects others) and round-trips exactly
        assert ModelSpec.model_validate(json.loads(entry.read_text(encoding="utf-8"))) == spec


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


def test_llama_2_7b_exact_hand_derived() -> None:
    m = model_catalog()["Llama-2-7B"]
    h, ffn, layers, vocab = 4096, 11008, 32, 32000
    attention = 4 * h * h  # q, k, v, o: 32 heads x 128 = 4096 wide each (MHA, no biases)
    mlp = 3 * h * ffn  # gate, up, down (SwiGLU)
    norms = 2 * h  # two RMSNorm gains per block
    embeddings = 2 * vocab * h  # untied input embedding + LM head
    final_norm = h
    expected = layers * (attention + mlp + norms) + embeddings + final_norm
    # 32 x (67,108,864 + 135,266,304 + 8,192) + 262,144,000 + 4,096
    assert expected == 6_738_415_616
    assert m.total_params() == expected


def test_bloom_176b_exact_hand_derived() -> None:
    m = model_catalog()["BLOOM-176B"]
    h, layers, vocab = 14336, 70, 250880
    attention = 4 * h * h + 4 * h  # fused qkv (3h x h) + dense (h x h), all with biases
    mlp = 2 * 4 * h * h + 4 * h + h  # h -> 4h -> h with biases
    norms = 2 * (2 * h)  # two LayerNorms (gain + bias)
    embeddings = vocab * h + 2 * h  # tied embedding + word_embeddings_layernorm
    final_norm = 2 * h
    expected = layers * (attention + mlp + norms) + embeddings + final_norm
    assert expected == 176_247_271_424  # the count BigScience publishes for BLOOM
    assert m.total_params() == expected


def test_deepseek_v3_exact_checkpoint_count() -> None:
    """Every tensor of the DeepSeek-V3 checkpoint except the multi-token-prediction layer 61."""
    m = model_catalog()["DeepSeek-V3"]
    h, heads, vocab = 7168, 128, 129280
    q = h * 1536 + 1536 + 1536 * heads * (128 + 64)  # q_a_proj, q_a_layernorm, q_b_proj
    kv = h * (512 + 64) + 512 + 512 * heads * (128 + 128)  # kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj
    attention = q + kv + heads * 128 * h + h  # + o_proj + input_layernorm
    assert attention == 187_114_496
    dense_mlp = 3 * h * 18432 + h  # gate/up/down + post_attention_layernorm
    experts = (256 + 1) * 3 * h * 2048  # routed + shared expert
    router = 256 * h + 256  # gate.weight + gate.e_score_correction_bias
    moe_mlp = experts + router + h
    expected = 61 * attention + 3 * dense_mlp + 58 * moe_mlp + 2 * vocab * h + h
    assert expected == 671_026_419_200
    assert m.total_params() == expected


def test_architecture_details() -> None:
    cat = model_catalog()
    qwen3 = cat["Qwen3-235B-A22B"]
    assert qwen3.head_dim == 128 and qwen3.q_dim == 64 * 128 != qwen3.hidden
    assert qwen3.qk_norm and qwen3.num_dense_layers == 0 and qwen3.ffn_hidden == 0
    ds = cat["DeepSeek-V3"]
    assert ds.mla is not None and ds.mla.kv_lora_rank == 512
    assert (ds.num_dense_layers, ds.num_moe_layers, ds.num_shared_experts) == (3, 58, 1)
    assert cat["Qwen2.5-72B"].qkv_bias and not cat["Qwen2.5-72B"].linear_bias
    assert cat["BLOOM-176B"].embedding_norm and cat["BLOOM-176B"].tied_embeddings
    assert cat["OPT-175B"].learned_positions == 2048 + 2
    for name in ("GPT-3-175B", "MT-NLG-530B", "Megatron-1T"):
        assert cat[name].learned_positions == 2048 and cat[name].linear_bias and cat[name].dropout
    assert cat["MT-NLG-530B"].vocab == cat["Megatron-1T"].vocab == 51200
    for name in ("Nemotron-4-15B", "Nemotron-4-340B"):
        m = cat[name]
        assert not m.gated_mlp and m.norm == "layernorm" and not m.linear_bias and not m.tied_embeddings
    gpt3_13b = cat["GPT-3-13B"]  # Table 2.1: d_model 5140 but 40 heads x 128 = 5120
    assert gpt3_13b.hidden == 5140 and gpt3_13b.q_dim == 5120


@pytest.mark.parametrize("query", ["llama-3.1-70b", "LLAMA-3.1-70B", "Llama_3.1_70b", "Llama-3.1-70B"])
def test_lookup_is_case_insensitive(query: str) -> None:
    assert load_model(query).name == "Llama-3.1-70B"


def test_unknown_name_suggests_close_presets() -> None:
    with pytest.raises(PlanError) as info:
        load_model("llama-3.1-7b")
    message = str(info.value)
    assert "llama-3.1-7b" in message and "Did you mean" in message and "Llama-3.1-8B" in message
    assert "\n" not in message
