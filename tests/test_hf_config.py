"""Reading Hugging Face `config.json` files into `ModelSpec`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from meshplan.errors import PlanError
from meshplan.specs.catalog import load_model, model_catalog
from meshplan.specs.hf_config import SUPPORTED_MODEL_TYPES, model_from_hf_config

CONFIGS = Path(__file__).parent / "data" / "hf_configs"

# Real config.json files of released checkpoints, one or more per supported model_type. Where they came from:
#   llama-3.1-8b             meta-llama/Llama-3.1-8B
#   mistral-7b-instruct-v0.1 mistralai/Mistral-7B-Instruct-v0.1
#   mixtral-8x7b             mistralai/Mixtral-8x7B-v0.1
#   qwen2.5-7b               Qwen/Qwen2.5-7B
#   qwen3-4b                 Qwen/Qwen3-4B (head_dim 128 while hidden/heads = 80)
#   qwen3-30b-a3b            Qwen/Qwen3-30B-A3B
#   deepseek-v3              deepseek-ai/DeepSeek-V3
#   gpt2-large               openai-community/gpt2-large
#   gpt-neox-20b             EleutherAI/gpt-neox-20b (early revision written by transformers 4.19)
#   opt-6.7b                 facebook/opt-6.7b
#   bloom-560m               bigscience/bloom-560m
#   minitron-4b-base         nvidia/Minitron-4B-Base (as copied into NVIDIA TensorRT-LLM's tests)
#   gpt-oss-120b             openai/gpt-oss-120b (quantization_config left out)
# Expected model_type of each file, so a missing family shows up here.
FILE_TYPES = {
    "llama-3.1-8b": "llama",
    "mistral-7b-instruct-v0.1": "mistral",
    "mixtral-8x7b": "mixtral",
    "qwen2.5-7b": "qwen2",
    "qwen3-4b": "qwen3",
    "qwen3-30b-a3b": "qwen3_moe",
    "deepseek-v3": "deepseek_v3",
    "gpt2-large": "gpt2",
    "gpt-neox-20b": "gpt_neox",
    "opt-6.7b": "opt",
    "bloom-560m": "bloom",
    "minitron-4b-base": "nemotron",
    "gpt-oss-120b": "gpt_oss",
}

# Parameters of the released checkpoint (sum of its tensor sizes, tied matrices once) where it is published exactly.
CHECKPOINT_PARAMS = {
    "llama-3.1-8b": 8_030_261_248,
    "mistral-7b-instruct-v0.1": 7_241_732_096,
    "mixtral-8x7b": 46_702_792_704,
    "qwen2.5-7b": 7_615_616_512,
    "qwen3-4b": 4_022_468_096,
    "qwen3-30b-a3b": 30_532_122_624,
    "gpt2-large": 774_030_080,
    "gpt-neox-20b": 20_554_567_680,
    "opt-6.7b": 6_658_473_984,
    "bloom-560m": 559_214_592,
}

# Stored config -> preset describing the same model.
SAME_AS_PRESET = {
    "llama-3.1-8b": "Llama-3.1-8B",
    "mixtral-8x7b": "Mixtral-8x7B",
    "qwen2.5-7b": "Qwen2.5-7B",
    "qwen3-30b-a3b": "Qwen3-30B-A3B",
    "deepseek-v3": "DeepSeek-V3",
    "mistral-7b-instruct-v0.1": "Mistral-7B",
    "gpt-oss-120b": "gpt-oss-120b",
}


def _config(stem: str) -> dict[str, Any]:
    return json.loads((CONFIGS / f"{stem}.json").read_text(encoding="utf-8"))


def _error(config: Any, name: str = "test-model") -> str:
    with pytest.raises(PlanError) as info:
        model_from_hf_config(config, name)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


def test_stored_configs_cover_every_family() -> None:
    stored = {p.stem for p in CONFIGS.glob("*.json")}
    assert stored == set(FILE_TYPES)
    required = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "deepseek_v3"}
    required |= {"gpt2", "gpt_neox", "opt", "bloom", "nemotron", "gpt_oss"}
    assert set(FILE_TYPES.values()) == required
    assert required <= set(SUPPORTED_MODEL_TYPES)
    for stem, model_type in FILE_TYPES.items():
        assert _config(stem)["model_type"] == model_type


@pytest.mark.parametrize("stem", sorted(FILE_TYPES))
def test_stored_config_loads(stem: str) -> None:
    model = model_from_hf_config(_config(stem), stem)
    assert model.name == stem
    assert model.total_params() > 0
    if stem in CHECKPOINT_PARAMS:
        assert model.total_params() == CHECKPOINT_PARAMS[stem]


@pytest.mark.parametrize("stem", sorted(SAME_AS_PRESET))
def test_config_matches_preset(stem: str) -> None:
    loaded = model_from_hf_config(_config(stem), "x").model_dump(exclude={"name"})
    preset = model_catalog()[SAME_AS_PRESET[stem]].model_dump(exclude={"name"})
    assert loaded == preset


def test_minitron_total() -> None:
    model = model_from_hf_config(_config("minitron-4b-base"), "minitron")
    assert abs(model.total_params() - 4.19e9) / 4.19e9 < 0.005  # model card: 4.19B


def test_qwen3_head_dim_differs_from_hidden_over_heads() -> None:
    config = _config("qwen3-4b")
    model = model_from_hf_config(config, "qwen3-4b")
    assert config["hidden_size"] // config["num_attention_heads"] == 80
    assert model.head_dim == 128
    assert model.q_dim == 32 * 128 and model.kv_dim == 8 * 128
    assert model.qk_norm and model.tied_embeddings and not model.qkv_bias
    without = {k: v for k, v in config.items() if k != "head_dim"}
    assert model_from_hf_config(without, "x").head_dim == 80


def test_family_fields() -> None:
    gpt2 = model_from_hf_config(_config("gpt2-large"), "gpt2-large")
    assert (gpt2.ffn_hidden, gpt2.learned_positions) == (4 * 1280, 1024)
    assert gpt2.tied_embeddings and gpt2.linear_bias and gpt2.dropout and gpt2.norm == "layernorm"
    assert not gpt2.gated_mlp

    opt = model_from_hf_config(_config("opt-6.7b"), "opt")
    assert opt.learned_positions == 2048 + 2 and opt.ffn_hidden == 16384
    assert opt.tied_embeddings and opt.linear_bias and opt.dropout

    bloom = model_from_hf_config(_config("bloom-560m"), "bloom")
    assert bloom.embedding_norm and bloom.tied_embeddings and bloom.ffn_hidden == 4 * 1024
    assert not bloom.dropout  # hidden_dropout and attention_dropout are 0.0

    neox = model_from_hf_config(_config("gpt-neox-20b"), "neox")
    assert not neox.tied_embeddings and neox.linear_bias and neox.learned_positions == 0

    nemotron = model_from_hf_config(_config("minitron-4b-base"), "nemotron")
    assert not nemotron.gated_mlp and nemotron.norm == "layernorm"
    assert not nemotron.linear_bias and not nemotron.qkv_bias
    assert (nemotron.num_kv_heads, nemotron.head_dim) == (8, 128)
    biased = model_from_hf_config({**_config("minitron-4b-base"), "attention_bias": True, "mlp_bias": True}, "n")
    assert biased.linear_bias

    qwen2 = model_from_hf_config(_config("qwen2.5-7b"), "qwen2")
    assert qwen2.qkv_bias and not qwen2.linear_bias and not qwen2.qk_norm

    mixtral = model_from_hf_config(_config("mixtral-8x7b"), "mixtral")
    assert (mixtral.ffn_hidden, mixtral.num_experts, mixtral.moe_topk, mixtral.moe_ffn_hidden) == (0, 8, 2, 14336)

    mistral = model_from_hf_config(_config("mistral-7b-instruct-v0.1"), "mistral")
    assert mistral.gated_mlp and mistral.norm == "rmsnorm" and not mistral.is_moe

    ds = model_from_hf_config(_config("deepseek-v3"), "ds")
    assert ds.mla is not None
    assert (ds.mla.q_lora_rank, ds.mla.kv_lora_rank, ds.mla.qk_rope_head_dim) == (1536, 512, 64)
    assert (ds.num_dense_layers, ds.ffn_hidden, ds.num_shared_experts) == (3, 18432, 1)


def test_qwen3_moe_leading_dense_layers_are_read() -> None:
    model = model_from_hf_config({**_config("qwen3-30b-a3b"), "mlp_only_layers": [0, 1]}, "x")
    assert (model.num_dense_layers, model.num_moe_layers, model.ffn_hidden) == (2, 46, 6144)


@pytest.mark.parametrize("change", [{"decoder_sparse_step": 2}, {"mlp_only_layers": [5]}])
def test_qwen3_moe_interleaved_layers_are_refused(change: dict[str, Any]) -> None:
    message = _error({**_config("qwen3-30b-a3b"), **change})
    assert "interleaved dense/MoE layers are not supported" in message


def test_deepseek_moe_layer_freq_interleave_is_refused() -> None:
    assert "interleaved" in _error({**_config("deepseek-v3"), "moe_layer_freq": 2})


QWEN2_MOE = {  # the shape of Qwen/Qwen1.5-MoE-A2.7B
    "model_type": "qwen2_moe",
    "hidden_size": 2048,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "intermediate_size": 5632,
    "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632,
    "num_experts": 60,
    "num_experts_per_tok": 4,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "vocab_size": 151936,
    "tie_word_embeddings": False,
}


def test_qwen2_moe_shared_expert_as_multiple() -> None:
    model = model_from_hf_config(QWEN2_MOE, "qwen1.5-moe")
    assert model.num_shared_experts == 5632 // 1408 == 4
    assert model.qkv_bias
    assert abs(model.total_params() - 14.3e9) / 14.3e9 < 0.01  # model card: 14.3B total
    assert abs(model.active_params() - 2.7e9) / 2.7e9 < 0.01  # 2.7B activated


def test_qwen2_moe_shared_expert_of_other_width_is_refused() -> None:
    message = _error({**QWEN2_MOE, "shared_expert_intermediate_size": 2000})
    assert "shared_expert_intermediate_size=2000" in message and "moe_intermediate_size=1408" in message


DEEPSEEK_V2_LITE = {  # the shape of deepseek-ai/DeepSeek-V2-Lite: no query compression (q_lora_rank null)
    "model_type": "deepseek_v2",
    "hidden_size": 2048,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "q_lora_rank": None,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "n_routed_experts": 64,
    "num_experts_per_tok": 6,
    "moe_intermediate_size": 1408,
    "n_shared_experts": 2,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "intermediate_size": 10944,
    "vocab_size": 102400,
    "tie_word_embeddings": False,
}


def test_deepseek_v2_without_query_compression() -> None:
    model = model_from_hf_config(DEEPSEEK_V2_LITE, "v2-lite")
    assert model.mla is not None and model.mla.q_lora_rank == 0
    assert (model.num_dense_layers, model.num_shared_experts, model.num_experts) == (1, 2, 64)
    assert abs(model.total_params() - 15.7e9) / 15.7e9 < 0.005  # model card: 15.7B total
    # model card: 2.4B activated, a figure without the 0.21B input embedding (a lookup) that active_params() includes
    embedding = 102400 * 2048
    assert abs(model.active_params() - embedding - 2.4e9) / 2.4e9 < 0.03


OPT_350M = {  # facebook/opt-350m projects 512-wide word embeddings up to the 1024-wide model
    "model_type": "opt",
    "hidden_size": 1024,
    "word_embed_proj_dim": 512,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "ffn_dim": 4096,
    "max_position_embeddings": 2048,
    "vocab_size": 50272,
    "do_layer_norm_before": False,
}


def test_opt_projected_embeddings_are_refused() -> None:
    message = _error(OPT_350M)
    assert "word_embed_proj_dim=512" in message and "hidden_size=1024" in message


# --- bad input ------------------------------------------------------------------------------------------


def test_missing_key_is_named() -> None:
    config = {k: v for k, v in _config("llama-3.1-8b").items() if k != "hidden_size"}
    message = _error(config)
    assert "'hidden_size'" in message and "missing" in message


def test_unsupported_model_type_lists_supported() -> None:
    message = _error({"model_type": "t5", "d_model": 512})
    assert "'t5'" in message and "not supported" in message
    for model_type in SUPPORTED_MODEL_TYPES:
        assert model_type in message


def test_missing_model_type() -> None:
    config = {k: v for k, v in _config("llama-3.1-8b").items() if k != "model_type"}
    message = _error(config)
    assert "model_type" in message and "llama" in message


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("num_hidden_layers", -2, "num_hidden_layers=-2"),
        ("num_hidden_layers", 0, "num_hidden_layers=0"),
        ("intermediate_size", "14336", "intermediate_size='14336'"),
        ("vocab_size", True, "vocab_size=True"),
        ("num_attention_heads", 32.5, "num_attention_heads=32.5"),
    ],
)
def test_bad_values_are_named(key: str, value: Any, shown: str) -> None:
    message = _error({**_config("llama-3.1-8b"), key: value})
    assert shown in message


def test_head_counts_that_do_not_divide_are_a_plan_error() -> None:
    message = _error({**_config("llama-3.1-8b"), "num_key_value_heads": 5})
    assert "num_kv_heads=5" in message


def test_hidden_not_divisible_by_heads_without_head_dim() -> None:
    assert "head_dim" in _error({**_config("llama-3.1-8b"), "num_attention_heads": 30, "num_key_value_heads": 30})


@pytest.mark.parametrize("config", [[1, 2], "llama", None, 3])
def test_not_an_object(config: Any) -> None:
    assert "not an object" in _error(config)


@pytest.mark.parametrize(
    ("stem", "key"),
    [
        ("gpt2-large", "n_embd"),
        ("opt-6.7b", "ffn_dim"),
        ("bloom-560m", "n_layer"),
        ("deepseek-v3", "kv_lora_rank"),
        ("mixtral-8x7b", "num_local_experts"),
        ("qwen3-30b-a3b", "moe_intermediate_size"),
        ("minitron-4b-base", "vocab_size"),
        ("gpt-neox-20b", "intermediate_size"),
    ],
)
def test_each_family_names_its_missing_key(stem: str, key: str) -> None:
    message = _error({k: v for k, v in _config(stem).items() if k != key})
    assert repr(key) in message and "missing" in message


# --- load_model on paths ------------------------------------------------------------------------------------


def test_load_model_from_file() -> None:
    model = load_model(CONFIGS / "qwen3-4b.json")
    assert model.name == "qwen3-4b" and model.head_dim == 128
    assert load_model(str(CONFIGS / "qwen3-4b.json")) == model


def test_load_model_from_directory(tmp_path: Path) -> None:
    folder = tmp_path / "Llama-3.1-8B-local"
    folder.mkdir()
    shutil.copy(CONFIGS / "llama-3.1-8b.json", folder / "config.json")
    model = load_model(folder)
    assert model.name == "Llama-3.1-8B-local"
    assert model.model_dump(exclude={"name"}) == model_catalog()["Llama-3.1-8B"].model_dump(exclude={"name"})


def test_load_model_non_json_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.json"
    path.write_bytes(b"\x00\x01 not json {")
    with pytest.raises(PlanError, match="not valid JSON"):
        load_model(path)


def test_load_model_json_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2, 3]", encoding="utf-8")
    with pytest.raises(PlanError, match="not an object"):
        load_model(path)


def test_load_model_missing_path(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="does not exist"):
        load_model(tmp_path / "nowhere" / "config.json")
