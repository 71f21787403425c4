"""Sliding-window attention: ModelSpec fields, HF config parsing, serving cost, KV capacity, training FLOPs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from meshplan.cost.flops import attention_core_flops_per_token
from meshplan.errors import PlanError
from meshplan.serve.capacity import capacity, kv_bytes_per_token
from meshplan.serve.cost import iteration_model
from meshplan.serve.deployment import Deployment, DeploymentTable
from meshplan.serve.efficiency import ServingEfficiency
from meshplan.serve.simulate import _Scalar, simulate
from meshplan.serve.workload import ServeWorkload
from meshplan.specs import load_gpu, load_model, make_cluster
from meshplan.specs.hf_config import model_from_hf_config
from meshplan.specs.model import ModelSpec, windowed_prompt_context

CONFIGS = Path(__file__).parent / "data" / "hf_configs"
EFF = ServingEfficiency(compute={"hopper": 0.5}, hbm=0.8, iteration_overhead_s={"trtllm": 0.0},
                        sequence_overhead_s=0.0, request_overhead_s={"trtllm": 0.0})


def _table(**kw: object) -> DeploymentTable:
    return DeploymentTable.of([Deployment(**kw)])  # type: ignore[arg-type]


def _gpt_oss() -> ModelSpec:
    return load_model("gpt-oss-120b")


def _without_window(model: ModelSpec) -> ModelSpec:
    return model.model_copy(update={"sliding_window": 0, "sliding_window_layers": 0})


def _with_window(model: ModelSpec, window: int, layers: int) -> ModelSpec:
    return ModelSpec(**{**model.model_dump(), "sliding_window": window, "sliding_window_layers": layers})


# --- ModelSpec ----------------------------------------------------------------------------------------------------

def test_gpt_oss_preset_windows_every_other_layer() -> None:
    model = _gpt_oss()
    assert (model.sliding_window, model.sliding_window_layers, model.num_layers) == (128, 18, 36)
    # a 5120-token sequence: 18 full layers keep 5120 tokens, 18 windowed ones 128: (18*5120 + 18*128) / 36 = 2624
    assert model.kv_tokens_held(5120.0) == 2624.0
    assert model.attended_context(5120.0) == 2624.0
    assert model.attended_context(100.0) == 100.0  # inside the window every layer sees everything
    contexts = np.array([64.0, 128.0, 1128.0])  # vectorised: (c + min(c, 128)) / 2
    assert np.array_equal(model.attended_context(contexts), [64.0, 128.0, 628.0])


def test_mistral_v01_preset_windows_every_layer() -> None:
    model = load_model("Mistral-7B")
    assert (model.sliding_window, model.sliding_window_layers) == (4096, 32)
    assert model.kv_tokens_held(10_000.0) == 4096.0


@pytest.mark.parametrize(("window", "layers", "fragment"), [
    (128, 37, "sliding_window_layers=37 exceeds num_layers=36"),
    (128, 0, "sliding_window=128 with sliding_window_layers=0"),
    (0, 18, "sliding_window=0 with sliding_window_layers=18"),
])
def test_bad_window_fields(window: int, layers: int, fragment: str) -> None:
    # pydantic wraps the validator's one-line PlanError in a ValidationError (a ValueError), as for every spec
    with pytest.raises(ValueError, match=fragment):
        _with_window(_gpt_oss(), window, layers)


def test_prompt_context_against_the_discrete_sum() -> None:
    # A 1024-token prompt (mean causal context cp = 512) on a 128-token window: token i attends min(i, 128),
    # sum_{i=1..1024} min(i, 128) = 128*129/2 + (1024 - 128)*128 = 122,944, mean 120.06. The closed form
    # (positions spread evenly over 0..2cp) gives W - W²/(4cp) = 128 - 16384/2048 = 120.
    assert windowed_prompt_context(512.0, 128, 1.0) == pytest.approx(120.0)
    assert windowed_prompt_context(512.0, 128, 1.0) == pytest.approx(122_944 / 1024, rel=1e-3)
    # half the layers windowed (gpt-oss): (512 + 120) / 2 = 316; a prompt within the window is untouched
    assert windowed_prompt_context(512.0, 128, 0.5) == pytest.approx(316.0)
    assert windowed_prompt_context(64.0, 128, 0.5) == 64.0
    assert windowed_prompt_context(0.0, 128, 0.5) == 0.0


# --- serving cost ---------------------------------------------------------------------------------------------------

def test_gpt_oss_kv_bytes_of_a_5120_token_sequence() -> None:
    # Per token and layer: K and V x 8 KV heads x head_dim 64 x 2 bytes (bf16) = 2048 bytes; 36 layers: 73,728.
    model = _gpt_oss()
    per_token = float(kv_bytes_per_token(model, _table(tp=1))[0])
    assert per_token == 73_728.0
    # Full attention: 5120 x 73,728 = 377,487,360 bytes. Windowed: 18 x 5120 x 2048 + 18 x 128 x 2048
    # = 188,743,680 + 4,718,592 = 193,462,272 bytes (= 2624 full-model tokens).
    assert per_token * 5120 == 377_487_360
    assert per_token * model.kv_tokens_held(5120.0) == 193_462_272


def test_gpt_oss_decode_attention_at_5120() -> None:
    # Decode of 64 sequences at context 5120 on one H100 (bf16 KV): bound by reading the KV cache,
    # 73,728 bytes per attended token at 3.35e12 x 0.8 B/s. Attended tokens: 64 x 2624 = 167,936 windowed,
    # 64 x 5120 = 327,680 full: 167,936 x 73,728 / 2.68e12 = 4.620 ms, 327,680 x 73,728 / 2.68e12 = 9.015 ms.
    model, gpu = _gpt_oss(), load_gpu("H100")
    cluster = make_cluster(gpu, 1)
    windowed = iteration_model(model, cluster, _table(tp=1), EFF, "trtllm")
    full = iteration_model(_without_window(model), cluster, _table(tp=1), EFF, "trtllm")
    assert windowed.terms(64.0, 5120.0, 0.0, 0.0)["attention"][0] == pytest.approx(167_936 * 73_728 / 2.68e12)
    assert full.terms(64.0, 5120.0, 0.0, 0.0)["attention"][0] == pytest.approx(327_680 * 73_728 / 2.68e12)


def test_gpt_oss_prefill_attention() -> None:
    # A 1024-token prompt (cp = 512) is compute-bound: 2·(q_dim 4096 + o_dim 4096) FLOPs per attended token and
    # layer, 36 layers, at 989e12 x 0.5 x attention_ratio 0.7 FLOP/s; 316 attended tokens on average (see above)
    model, gpu = _gpt_oss(), load_gpu("H100")
    it = iteration_model(model, make_cluster(gpu, 1), _table(tp=1), EFF, "trtllm")
    per_token_ctx = 2.0 * 8192 * 36 / (989e12 * 0.5 * 0.7)
    assert it.terms(0.0, 0.0, 1024.0, 512.0)["attention"][0] == pytest.approx(1024 * 316 * per_token_ctx)


def test_kv_capacity_in_sequences() -> None:
    # gpt-oss-120b fp4 on two H200: the KV budget in full-model tokens does not depend on the window, and a
    # 5120-token sequence takes 2624 of them instead of 5120, so 5120/2624 = 1.95x as many sequences fit.
    model, gpu = _gpt_oss(), load_gpu("H200")
    t = _table(tp=2, precision="fp4", kv_dtype="fp8")
    windowed = capacity(model, gpu, t, 0.9, 3e9)
    full = capacity(_without_window(model), gpu, t, 0.9, 3e9)
    assert windowed.kv_tokens[0] == full.kv_tokens[0] > 0
    assert windowed.max_sequences(5120.0)[0] == math.floor(windowed.kv_tokens[0] / 2624)
    assert full.max_sequences(5120.0)[0] == math.floor(full.kv_tokens[0] / 5120)
    assert windowed.max_sequences(5120.0)[0] >= 1.9 * full.max_sequences(5120.0)[0]


@pytest.mark.parametrize("name", ["gpt-oss-120b", "Mistral-7B"])
def test_a_window_never_raises_time_or_memory(name: str) -> None:
    model, gpu = load_model(name), load_gpu("H200")
    cluster, t = make_cluster(gpu, 2), _table(tp=2, precision="fp8", kv_dtype="fp8")
    windowed = iteration_model(model, cluster, t, EFF, "trtllm")
    full = iteration_model(_without_window(model), cluster, t, EFF, "trtllm")
    d, c, p = np.meshgrid([0.0, 1.0, 64.0], [10.0, 500.0, 5000.0, 50_000.0], [0.0, 256.0, 8192.0])
    for cp in (c / 4.0, c):
        assert np.all(windowed.time(d, c, p, cp) <= full.time(d, c, p, cp))
    cap_w, cap_f = capacity(model, gpu, t, 0.9, 3e9), capacity(_without_window(model), gpu, t, 0.9, 3e9)
    for tokens in (100.0, 5000.0, 50_000.0):
        assert cap_w.max_sequences(tokens)[0] >= cap_f.max_sequences(tokens)[0]


def test_a_window_beyond_the_context_changes_nothing() -> None:
    # A window of 65,536 tokens on every layer: contexts up to 65,536 (prompts up to twice the mean causal context
    # 32,768) see exactly what full attention sees.
    base, gpu = load_model("Llama-3.1-8B"), load_gpu("H100")
    wide = _with_window(base, 65_536, base.num_layers)
    cluster, t = make_cluster(gpu, 1), _table(tp=1)
    a, b = (iteration_model(m, cluster, t, EFF, "trtllm") for m in (wide, base))
    args = (np.array([1.0, 32.0]), np.array([100.0, 65_536.0]), np.array([4096.0, 0.0]), np.array([2048.0, 32_768.0]))
    for name, value in a.terms(*args).items():
        assert np.array_equal(value, b.terms(*args)[name]), name
    assert np.array_equal(capacity(wide, gpu, t, 0.9, 3e9).max_sequences(65_536.0),
                          capacity(base, gpu, t, 0.9, 3e9).max_sequences(65_536.0))
    assert attention_core_flops_per_token(wide, 65_536, True) == attention_core_flops_per_token(base, 65_536, True)


def test_scalar_step_agrees_with_the_vectorised_model() -> None:
    model, gpu = _gpt_oss(), load_gpu("H200")
    it = iteration_model(model, make_cluster(gpu, 2), _table(tp=2, precision="fp4", kv_dtype="fp8"), EFF, "trtllm")
    step = _Scalar(it)
    for d, c, p, cp in ((64.0, 5120.0, 0.0, 0.0), (8.0, 90.0, 2048.0, 700.0), (0.0, 0.0, 100.0, 50.0)):
        assert step(d, c, p, cp) == pytest.approx(float(it.time(d, c, p, cp)[0]), rel=1e-12)


def test_simulation_admits_what_the_window_leaves() -> None:
    # A KV cache of 3 x 5120 full-model tokens holds 3 full-attention sequences of 4096+1024 tokens at once, but
    # 5 windowed ones (each takes 2624): the windowed simulation batches more.
    model, gpu = _gpt_oss(), load_gpu("H200")
    t = _table(tp=2, precision="fp4", kv_dtype="fp8")
    w = ServeWorkload(isl=4096, osl=1024, concurrency=16, num_requests=40)
    kw: dict[str, Any] = {"kv_tokens": 3 * 5120.0, "max_batch": 64, "chunk_tokens": 8192, "replicas": 1,
                          "num_requests": 40}
    batch = {}
    for label, m in (("windowed", model), ("full", _without_window(model))):
        batch[label] = simulate(iteration_model(m, make_cluster(gpu, 2), t, EFF, "trtllm"), w, **kw).mean_batch
    assert batch["full"] <= 3.0 < batch["windowed"] <= 5.0


# --- training FLOPs -------------------------------------------------------------------------------------------------

def test_training_attention_flops_with_flash() -> None:
    # seq_len 4096, flash (causal skip): full layers attend 2048 on average, windowed ones
    # 128 - 128²/(2·4096) = 126; gpt-oss mean (2048 + 126) / 2 = 1087 tokens x 2·(4096 + 4096) FLOPs
    model = _gpt_oss()
    assert attention_core_flops_per_token(model, 4096, True) == pytest.approx(1087 * 2 * 8192)
    assert attention_core_flops_per_token(model, 4096, False) == 4096 * 2 * 8192  # masked scores still computed
    assert attention_core_flops_per_token(_without_window(model), 4096, True) == 2048 * 2 * 8192


# --- HF config parsing ----------------------------------------------------------------------------------------------

def _config(stem: str) -> dict[str, Any]:
    return json.loads((CONFIGS / f"{stem}.json").read_text(encoding="utf-8"))


def test_gpt_oss_config() -> None:
    model = model_from_hf_config(_config("gpt-oss-120b"), "gpt-oss-120b")
    assert (model.sliding_window, model.sliding_window_layers) == (128, 18)
    # OpenAI gpt-oss model card: 116.83B parameters in all, 5.13B active per token without the embedding
    # (the 2304 attention-sink logits are not counted)
    assert model.total_params() == pytest.approx(116.83e9, rel=1e-4)
    assert model.active_params() - model.embedding_params() == pytest.approx(5.13e9, rel=1e-3)


def test_mistral_v01_windows_every_layer() -> None:
    model = model_from_hf_config(_config("mistral-7b-instruct-v0.1"), "m")
    assert (model.sliding_window, model.sliding_window_layers) == (4096, 32)


@pytest.mark.parametrize(("stem", "update", "expected"), [
    ("qwen2.5-7b", {}, (0, 0)),  # sliding_window 131072 with use_sliding_window false
    ("qwen3-4b", {}, (0, 0)),  # sliding_window null, use_sliding_window false
    ("qwen2.5-7b", {"use_sliding_window": True}, (0, 0)),  # max_window_layers 28 = every layer full
    ("qwen2.5-7b", {"use_sliding_window": True, "max_window_layers": 20, "sliding_window": 4096}, (4096, 8)),
    ("mistral-7b-instruct-v0.1", {"sliding_window": None}, (0, 0)),  # v0.2/v0.3 style
    ("mistral-7b-instruct-v0.1", {"use_sliding_window": False}, (0, 0)),
    ("mistral-7b-instruct-v0.1", {"layer_types": ["sliding_attention", "full_attention"] * 16}, (4096, 16)),
    ("gpt-oss-120b", {"layer_types": ["full_attention"] * 36}, (0, 0)),
    ("mixtral-8x7b", {}, (0, 0)),  # sliding_window null
])
def test_window_parsing(stem: str, update: dict[str, Any], expected: tuple[int, int]) -> None:
    model = model_from_hf_config({**_config(stem), **update}, stem)
    assert (model.sliding_window, model.sliding_window_layers) == expected


@pytest.mark.parametrize(("update", "fragment"), [
    ({"layer_types": ["sliding_attention"] * 35}, "is not a list of 36"),
    ({"layer_types": ["chunked_attention"] * 36}, "'sliding_attention'/'full_attention'"),
    ({"layer_types": "sliding_attention"}, "is not a list of 36"),
    ({"sliding_window": -1}, "sliding_window=-1 must be an integer >= 0"),
    ({"sliding_window": "128"}, "sliding_window='128' is not an integer"),
    ({"use_sliding_window": "yes"}, "use_sliding_window='yes' is not true/false"),
])
def test_bad_window_config(update: dict[str, Any], fragment: str) -> None:
    with pytest.raises(PlanError) as info:
        model_from_hf_config({**_config("gpt-oss-120b"), **update}, "bad")
    message = str(info.value)
    assert fragment in message and "fix config.json" in message and "\n" not in message
