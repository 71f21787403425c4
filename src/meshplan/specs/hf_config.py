"""Build a `ModelSpec` from a Hugging Face `config.json` dict.

One reader per `model_type` family. Every bad input (not a JSON object, no or unknown `model_type`, a missing key,
a value that is not a positive integer, a layout `ModelSpec` cannot express) raises `PlanError` with a one-line
message naming the key, the value and the fix.

Approximations (all far below 0.01 % of any real model's parameters):

* `attention_bias` without `mlp_bias` (Llama/Qwen3/Nemotron style) is read as `qkv_bias`: the output-projection
  bias (`hidden` values per layer) has no `ModelSpec` field and is dropped. `mlp_bias` without `attention_bias` is
  read as `linear_bias` (over-counts the attention biases).
* Router extras are not counted: DeepSeek-V3's `e_score_correction_bias` (`n_routed_experts` values per MoE layer)
  and Qwen2-MoE's `shared_expert_gate` (`hidden` values per MoE layer).
* gpt-oss's attention sinks (`num_attention_heads` learned logits per layer) are not counted.
* Sliding-window attention: `sliding_window` on the layers `layer_types` marks "sliding_attention" (gpt-oss), on the
  layers from `max_window_layers` on (Qwen2/3 with `use_sliding_window`), else on every layer (Mistral v0.1); none
  when the window is null/0 or `use_sliding_window` is false. Llama-4's chunked attention (`attention_chunk_size`)
  is not read: `llama4` configs are not supported.
* DeepSeek's multi-token-prediction module (`num_nextn_predict_layers`) is not part of the model (the 671B figure of
  DeepSeek-V3 excludes it as well).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from meshplan.errors import PlanError
from meshplan.specs.model import MlaSpec, ModelSpec

_LLAMA_LIKE = ("llama", "mistral", "mixtral", "gpt_oss", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "deepseek_v2", "deepseek_v3")
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted((*_LLAMA_LIKE, "gpt2", "gpt_neox", "opt", "bloom", "nemotron")))
"""The `model_type` values `model_from_hf_config` reads."""

_MISSING = object()


class _Config:
    """Typed, validating access to one config dict; every error names the model and the key."""

    def __init__(self, config: dict[str, Any], name: str, model_type: str) -> None:
        self.raw = config
        self.name = name
        self.model_type = model_type

    def error(self, message: str) -> PlanError:
        return PlanError(f"HF config {self.name!r} (model_type {self.model_type!r}): {message}")

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def integer(self, *keys: str, default: Any = _MISSING, minimum: int = 1) -> int:
        """The first of `keys` present (and not null), as an integer >= `minimum`."""
        for key in keys:
            value = self.raw.get(key)
            if value is None:
                continue
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.error(f"{key}={value!r} is not an integer; fix config.json")
            if value < minimum:
                kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
                raise self.error(f"{key}={value} must be {kind}; fix config.json")
            return value
        if default is _MISSING:
            alternatives = f" (or {', '.join(repr(k) for k in keys[1:])})" if len(keys) > 1 else ""
            raise self.error(f"missing required key {keys[0]!r}{alternatives}; add it to config.json")
        return default

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(f"{key}={value!r} is not true/false; fix config.json")
        return value

    def int_list(self, key: str) -> list[int]:
        value = self.raw.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self.error(f"{key}={value!r} is not a list of layer indices; fix config.json")
        return value

    def dropout(self) -> bool:
        """True when any dropout probability of the network is > 0 (classifier/summary heads ignored)."""
        for key, value in self.raw.items():
            if not ("dropout" in key or key.endswith("pdrop")):
                continue
            if key.startswith(("summary_", "classifier")):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return True
        return False

    def head_dim(self, hidden: int, heads: int, *keys: str) -> int:
        """Explicit `head_dim` when the config has one (Qwen3 and others differ from hidden/heads)."""
        explicit = self.integer(*keys, default=0) if keys else 0
        if explicit:
            return explicit
        if hidden % heads:
            raise self.error(
                f"hidden size {hidden} is not divisible by {heads} attention heads and no head_dim is given; "
                "add head_dim to config.json"
            )
        return hidden // heads


def model_from_hf_config(config: dict, name: str) -> ModelSpec:
    """A `ModelSpec` named `name` from a Hugging Face `config.json` dict; `PlanError` on anything unreadable."""
    if not isinstance(config, dict):
        raise PlanError(
            f"HF config {name!r} is a JSON {type(config).__name__}, not an object; pass a Hugging Face config.json"
        )
    supported = ", ".join(SUPPORTED_MODEL_TYPES)
    model_type = config.get("model_type")
    if model_type is None:
        raise PlanError(
            f"HF config {name!r} has no 'model_type' key; use a Hugging Face config.json of a supported model "
            f"type ({supported})"
        )
    if not isinstance(model_type, str) or model_type not in SUPPORTED_MODEL_TYPES:
        raise PlanError(
            f"HF config {name!r}: model_type {model_type!r} is not supported; supported model types: {supported}"
        )
    cfg = _Config(config, name, model_type)
    if model_type in _LLAMA_LIKE:
        fields = _llama_like(cfg)
    else:
        fields = {"gpt2": _gpt2, "gpt_neox": _gpt_neox, "opt": _opt, "bloom": _bloom, "nemotron": _nemotron}[
            model_type
        ](cfg)
    try:
        return ModelSpec(name=name, **fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first.get("msg", exc)).removeprefix("Value error, ")
        raise cfg.error(f"{where + ': ' if where else ''}{message}") from None


# --- families ---------------------------------------------------------------------------------------------


def _bias_fields(cfg: _Config, default_attention: bool = False) -> dict[str, bool]:
    attention = cfg.flag("attention_bias", default_attention)
    mlp = cfg.flag("mlp_bias", False)
    return {"linear_bias": mlp, "qkv_bias": attention and not mlp}


def _llama_like(cfg: _Config) -> dict[str, Any]:
    t = cfg.model_type
    layers = cfg.integer("num_hidden_layers")
    hidden = cfg.integer("hidden_size")
    heads = cfg.integer("num_attention_heads")
    fields: dict[str, Any] = {
        "num_layers": layers,
        "hidden": hidden,
        "num_heads": heads,
        "num_kv_heads": cfg.integer("num_key_value_heads", default=heads),
        "vocab": cfg.integer("vocab_size"),
        "gated_mlp": True,
        "tied_embeddings": cfg.flag("tie_word_embeddings", False),
        "norm": "rmsnorm",
        "qk_norm": t in ("qwen3", "qwen3_moe"),
        "dropout": cfg.dropout(),
        **_bias_fields(cfg),
    }
    if t in ("qwen2", "qwen2_moe"):  # Qwen2 always has q/k/v biases and no others
        fields.update(linear_bias=False, qkv_bias=True)

    if t in ("deepseek_v2", "deepseek_v3"):
        rope = cfg.integer("qk_rope_head_dim")
        nope = cfg.integer("qk_nope_head_dim")
        fields["mla"] = MlaSpec(
            q_lora_rank=cfg.integer("q_lora_rank", default=0, minimum=0),
            kv_lora_rank=cfg.integer("kv_lora_rank"),
            qk_nope_head_dim=nope,
            qk_rope_head_dim=rope,
            v_head_dim=cfg.integer("v_head_dim"),
        )
        fields["head_dim"] = nope + rope
    else:
        fields["head_dim"] = cfg.head_dim(hidden, heads, "head_dim")

    if t == "gpt_oss":  # biases on every linear layer (attention and experts) and on the router
        fields.update(linear_bias=True, qkv_bias=False, router_bias=True)
    if t in ("mixtral", "gpt_oss"):
        fields.update(
            ffn_hidden=0,
            num_experts=cfg.integer("num_local_experts"),
            moe_topk=cfg.integer("num_experts_per_tok"),
            moe_ffn_hidden=cfg.integer("intermediate_size"),
        )
    elif t in ("qwen2_moe", "qwen3_moe"):
        experts = cfg.integer("num_experts", default=0, minimum=0)
        step = cfg.integer("decoder_sparse_step", default=1)
        only_dense = set(cfg.int_list("mlp_only_layers"))
        is_moe = [experts > 0 and i not in only_dense and (i + 1) % step == 0 for i in range(layers)]
        fields.update(_moe_layout(cfg, is_moe, experts, "mlp_only_layers/decoder_sparse_step"))
        if experts and t == "qwen2_moe":
            shared = cfg.integer("shared_expert_intermediate_size", default=0, minimum=0)
            moe = fields["moe_ffn_hidden"]
            if shared % moe:
                raise cfg.error(
                    f"shared_expert_intermediate_size={shared} is not a multiple of moe_intermediate_size={moe}; "
                    "a shared expert of another width is not supported"
                )
            fields["num_shared_experts"] = shared // moe
    elif t in ("deepseek_v2", "deepseek_v3"):
        experts = cfg.integer("n_routed_experts", default=0, minimum=0)
        first_dense = cfg.integer("first_k_dense_replace", default=0, minimum=0)
        freq = cfg.integer("moe_layer_freq", default=1)
        is_moe = [experts > 0 and i >= first_dense and i % freq == 0 for i in range(layers)]
        fields.update(_moe_layout(cfg, is_moe, experts, "first_k_dense_replace/moe_layer_freq"))
        if experts:
            fields["num_shared_experts"] = cfg.integer("n_shared_experts", default=0, minimum=0)
            fields["router_bias"] = cfg.raw.get("topk_method") == "noaux_tc"  # e_score_correction_bias
    else:
        fields["ffn_hidden"] = cfg.integer("intermediate_size")
    return {**fields, **_sliding_window(cfg, layers)}


def _sliding_window(cfg: _Config, layers: int) -> dict[str, int]:
    """`sliding_window` and how many layers use it (see the module docstring for the rules)."""
    window = cfg.integer("sliding_window", default=0, minimum=0)
    if not window or not cfg.flag("use_sliding_window", True):
        return {}
    types = cfg.raw.get("layer_types")
    if types is not None:
        kinds = {"sliding_attention", "full_attention"}
        if not isinstance(types, list) or len(types) != layers or not set(types) <= kinds:
            raise cfg.error(f"layer_types={types!r} is not a list of {layers} 'sliding_attention'/'full_attention' "
                            "entries (one per layer); fix config.json")
        windowed = types.count("sliding_attention")
    elif cfg.has("max_window_layers") and cfg.model_type.startswith("qwen"):
        windowed = max(layers - cfg.integer("max_window_layers", minimum=0), 0)  # layers i >= max_window_layers
    else:
        windowed = layers
    return {"sliding_window": window, "sliding_window_layers": windowed} if windowed else {}


def _moe_layout(cfg: _Config, is_moe: list[bool], experts: int, keys: str) -> dict[str, Any]:
    """MoE fields for a per-layer MoE/dense pattern: all MoE, or leading dense layers then all MoE."""
    if not any(is_moe):
        return {"ffn_hidden": cfg.integer("intermediate_size")}
    dense = is_moe.index(True)
    if not all(is_moe[dense:]):
        pattern = "".join("E" if m else "D" for m in is_moe)
        raise cfg.error(
            f"interleaved dense/MoE layers are not supported ({keys} give the layer pattern {pattern}, "
            "D=dense, E=MoE); only leading dense layers followed by MoE layers can be planned"
        )
    return {
        "ffn_hidden": cfg.integer("intermediate_size") if dense else 0,  # 0: no dense MLP anywhere
        "num_dense_layers": dense,
        "num_experts": experts,
        "moe_topk": cfg.integer("num_experts_per_tok"),
        "moe_ffn_hidden": cfg.integer("moe_intermediate_size"),
    }


def _layernorm_mha(cfg: _Config, hidden: int, heads: int, layers: int, ffn: int, tied: bool) -> dict[str, Any]:
    """Fields shared by the GPT-2-era families: multi-head attention, LayerNorm, biases, a plain MLP."""
    return {
        "num_layers": layers,
        "hidden": hidden,
        "ffn_hidden": ffn,
        "num_heads": heads,
        "num_kv_heads": heads,
        "head_dim": cfg.head_dim(hidden, heads),
        "vocab": cfg.integer("vocab_size"),
        "gated_mlp": False,
        "tied_embeddings": cfg.flag("tie_word_embeddings", tied),
        "norm": "layernorm",
        "linear_bias": True,
        "dropout": cfg.dropout(),
    }


def _gpt2(cfg: _Config) -> dict[str, Any]:
    hidden = cfg.integer("n_embd", "hidden_size")
    fields = _layernorm_mha(cfg, hidden, cfg.integer("n_head", "num_attention_heads"), cfg.integer("n_layer", "num_hidden_layers"),
                            cfg.integer("n_inner", default=4 * hidden), tied=True)
    return {**fields, "learned_positions": cfg.integer("n_positions", "max_position_embeddings")}


def _gpt_neox(cfg: _Config) -> dict[str, Any]:
    return _layernorm_mha(cfg, cfg.integer("hidden_size"), cfg.integer("num_attention_heads"), cfg.integer("num_hidden_layers"),
                          cfg.integer("intermediate_size"), tied=False)


_OPT_POSITION_OFFSET = 2
"""OPT's learned positional embedding has `max_position_embeddings + 2` rows (fairseq's padding offset)."""


def _opt(cfg: _Config) -> dict[str, Any]:
    hidden = cfg.integer("hidden_size")
    proj = cfg.integer("word_embed_proj_dim", default=hidden)
    if proj != hidden:
        raise cfg.error(
            f"word_embed_proj_dim={proj} differs from hidden_size={hidden} (OPT-350m style projected embeddings) "
            "and is not supported; use an OPT checkpoint whose word_embed_proj_dim equals hidden_size"
        )
    fields = _layernorm_mha(cfg, hidden, cfg.integer("num_attention_heads"), cfg.integer("num_hidden_layers"),
                            cfg.integer("ffn_dim"), tied=True)
    return {**fields, "linear_bias": cfg.flag("enable_bias", True),
            "learned_positions": cfg.integer("max_position_embeddings") + _OPT_POSITION_OFFSET}


def _bloom(cfg: _Config) -> dict[str, Any]:
    hidden = cfg.integer("hidden_size", "n_embed")
    fields = _layernorm_mha(cfg, hidden, cfg.integer("n_head", "num_attention_heads"), cfg.integer("n_layer", "num_hidden_layers"),
                            4 * hidden, tied=True)
    return {**fields, "embedding_norm": True}


def _nemotron(cfg: _Config) -> dict[str, Any]:
    hidden = cfg.integer("hidden_size")
    heads = cfg.integer("num_attention_heads")
    return {
        "num_layers": cfg.integer("num_hidden_layers"),
        "hidden": hidden,
        "ffn_hidden": cfg.integer("intermediate_size"),
        "num_heads": heads,
        "num_kv_heads": cfg.integer("num_key_value_heads", default=heads),
        "head_dim": cfg.head_dim(hidden, heads, "head_dim", "kv_channels"),
        "vocab": cfg.integer("vocab_size"),
        "gated_mlp": False,  # squared-ReLU MLP, two matrices
        "tied_embeddings": cfg.flag("tie_word_embeddings", False),
        "norm": "layernorm",  # LayerNorm1P: gain and bias
        "dropout": cfg.dropout(),
        **_bias_fields(cfg),
    }

