"""`ModelSpec`: the shape of a decoder-only transformer, dense or mixture-of-experts.

Parameter counts follow the layer structure directly (every weight matrix, bias and norm gain counted once);
FLOPs and memory live in `meshplan.cost`, which reads the per-layer counts defined here.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np
from pydantic import Field, model_validator

from meshplan.errors import PlanError
from meshplan.specs.base import Frozen as _Frozen

Context = TypeVar("Context", float, np.ndarray)


def windowed_context(c: Context, window: float, windowed_share: float) -> Context:
    """Mean over layers of the tokens one query at context `c` attends to (or one sequence of `c` tokens keeps
    in the KV cache), when a share `windowed_share` of the layers attends only to the last `window` tokens:
    (1 - share)·c + share·min(c, W) (Beltagy et al. 2020, Longformer §3.1; Jiang et al. 2023, Mistral 7B §2).
    `c` may be a float or a numpy array (element-wise); with no window it is returned unchanged."""
    if not windowed_share:
        return c
    return c - windowed_share * np.maximum(c - window, 0.0)  # type: ignore[return-value]


def windowed_prompt_context(cp: Context, window: float, windowed_share: float) -> Context:
    """`windowed_context` for the prompt tokens of a prefill whose mean causal context is `cp`, taking the
    tokens as spread evenly over positions 0..2·cp (a whole prompt of 2·cp tokens): a windowed layer's token at
    position i attends min(i, W), whose mean over the prompt is cp when 2·cp <= W, else W - W²/(4·cp), i.e.
    cp less (2·cp - W)²/(4·cp). A later chunk of a long prompt (all its positions past W) attends W exactly;
    the even spread then overstates it by W²/(4·cp) tokens, a small share of W once cp >> W."""
    if not windowed_share:
        return cp
    excess = np.maximum(2.0 * cp - window, 0.0) ** 2 / (4.0 * np.maximum(cp, 1e-9))
    return cp - windowed_share * excess  # type: ignore[no-any-return]


class MlaSpec(_Frozen):
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank compressed queries and keys/values.

    The projections are counted exactly. For activations and attention FLOPs the attention core is treated
    as multi-head attention with `qk_nope_head_dim + qk_rope_head_dim` wide queries/keys and `v_head_dim`
    wide values (the decompressed form used in training); the KV cache of serving holds the compressed
    latent (`kv_lora_rank + qk_rope_head_dim` per token and layer).
    """

    q_lora_rank: int = Field(ge=0)
    """Rank of the query compression (0: queries projected directly from the hidden state)."""
    kv_lora_rank: int = Field(gt=0)
    """Rank of the joint key/value compression."""
    qk_nope_head_dim: int = Field(gt=0)
    """Per-head query/key width without rotary embedding."""
    qk_rope_head_dim: int = Field(gt=0)
    """Per-head query/key width that carries the rotary embedding (the key part is shared by all heads)."""
    v_head_dim: int = Field(gt=0)
    """Per-head value width."""


class ModelSpec(_Frozen):
    """A decoder-only transformer. Dense when `num_experts == 0`."""

    name: str
    """Display name, e.g. `Llama-3.1-70B`."""
    num_layers: int = Field(gt=0)
    """Transformer blocks."""
    hidden: int = Field(gt=0)
    """Model width (d_model)."""
    ffn_hidden: int = Field(ge=0)
    """Intermediate width of a dense MLP (0 when every layer is an MoE layer)."""
    num_heads: int = Field(gt=0)
    """Query heads."""
    num_kv_heads: int = Field(gt=0)
    """Key/value heads: equal to `num_heads` for MHA, fewer for GQA, 1 for MQA."""
    head_dim: int = Field(gt=0)
    """Width of one attention head (usually hidden / num_heads)."""
    vocab: int = Field(gt=0)
    """Vocabulary size (as padded in the checkpoint)."""
    gated_mlp: bool
    """SwiGLU/GeGLU MLP with three matrices (gate, up, down) instead of two."""
    tied_embeddings: bool
    """The LM head shares the input embedding matrix."""
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    """Normalisation kind; LayerNorm has a bias besides its gain."""
    linear_bias: bool = False
    """Every linear layer has a bias (GPT-2/3, OPT, BLOOM)."""
    qkv_bias: bool = False
    """Only the query/key/value projections have a bias (Qwen2)."""
    qk_norm: bool = False
    """Per-head RMSNorm on queries and keys (Qwen3)."""
    learned_positions: int = Field(default=0, ge=0)
    """Rows of a learned absolute position embedding (GPT-2/3, OPT); 0 for rotary or ALiBi."""
    embedding_norm: bool = False
    """A norm right after the token embedding (BLOOM)."""
    dropout: bool = False
    """Dropout layers present in training (stores 1-byte masks; Korthikanti et al. 2022 count them)."""
    num_experts: int = Field(default=0, ge=0)
    """Routed experts per MoE layer (0: dense model)."""
    moe_topk: int = Field(default=0, ge=0)
    """Routed experts each token visits."""
    moe_ffn_hidden: int = Field(default=0, ge=0)
    """Intermediate width of one routed (and one shared) expert."""
    num_shared_experts: int = Field(default=0, ge=0)
    """Always-active shared experts per MoE layer, each `moe_ffn_hidden` wide."""
    router_bias: bool = False
    """The router has a per-expert bias (DeepSeek-V3's score-correction bias)."""
    num_dense_layers: int = Field(default=0, ge=0)
    """Leading layers with a dense MLP in an MoE model (DeepSeek-V3: 3)."""
    mla: MlaSpec | None = None
    """Multi-head latent attention, when the model uses it."""
    sliding_window: int = Field(default=0, ge=0)
    """Tokens each sliding-window layer attends to (its query and the window - 1 before it); 0: no window."""
    sliding_window_layers: int = Field(default=0, ge=0)
    """How many of the `num_layers` use the sliding window (gpt-oss: 18 of 36, every other one); the rest attend
    to the whole context."""

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.num_heads % self.num_kv_heads:
            raise PlanError(
                f"model {self.name}: num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}; fix the config's head counts"
            )
        if self.num_experts:
            if not 0 < self.moe_topk <= self.num_experts:
                raise PlanError(
                    f"model {self.name}: moe_topk={self.moe_topk} must be in 1..num_experts={self.num_experts}"
                )
            if self.moe_ffn_hidden <= 0:
                raise PlanError(f"model {self.name}: an MoE model needs moe_ffn_hidden > 0")
            if self.num_dense_layers > self.num_layers:
                raise PlanError(f"model {self.name}: num_dense_layers exceeds num_layers={self.num_layers}")
            if self.num_dense_layers and self.ffn_hidden <= 0:
                raise PlanError(f"model {self.name}: dense layers need ffn_hidden > 0")
        elif self.ffn_hidden <= 0:
            raise PlanError(f"model {self.name}: a dense model needs ffn_hidden > 0")
        if self.sliding_window_layers > self.num_layers:
            raise PlanError(f"model {self.name}: sliding_window_layers={self.sliding_window_layers} exceeds "
                            f"num_layers={self.num_layers}; give at most {self.num_layers} windowed layers")
        if (self.sliding_window > 0) != (self.sliding_window_layers > 0):
            raise PlanError(f"model {self.name}: sliding_window={self.sliding_window} with "
                            f"sliding_window_layers={self.sliding_window_layers}; set both > 0 or both 0")
        return self

    # --- shape helpers -------------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers if self.is_moe else 0

    @property
    def num_mlp_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def q_dim(self) -> int:
        """Width of all query heads together (attention-score side)."""
        if self.mla is not None:
            return self.num_heads * (self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim)
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of all key heads together (equal to the value width except under MLA)."""
        if self.mla is not None:
            return self.q_dim
        return self.num_kv_heads * self.head_dim

    @property
    def v_dim(self) -> int:
        """Width of all value heads together (= the input width of the output projection)."""
        if self.mla is not None:
            return self.num_heads * self.mla.v_head_dim
        return self.num_kv_heads * self.head_dim

    @property
    def attn_out_dim(self) -> int:
        """Width entering the attention output projection."""
        if self.mla is not None:
            return self.num_heads * self.mla.v_head_dim
        return self.num_heads * self.head_dim

    @property
    def windowed_share(self) -> float:
        """Share of the layers that use the sliding window (0.0 without one)."""
        return self.sliding_window_layers / self.num_layers

    def attended_context(self, c: Context) -> Context:
        """Mean over layers of the tokens a query at context `c` attends to: c on full-attention layers,
        min(c, sliding_window) on windowed ones. Works element-wise on a numpy array of contexts."""
        return windowed_context(c, self.sliding_window, self.windowed_share)

    def kv_tokens_held(self, n: Context) -> Context:
        """KV-cache tokens a sequence of `n` tokens keeps, in full-model tokens (all layers): the windowed
        layers keep only the last sliding_window tokens. Works element-wise on a numpy array."""
        return windowed_context(n, self.sliding_window, self.windowed_share)

    # --- parameter counts (weights + biases + norm gains) ------------------------------------------------
    def _norm_params(self, width: int) -> int:
        return width * (2 if self.norm == "layernorm" else 1)

    def attention_params(self) -> int:
        """Parameters of one attention block, its pre-norm included."""
        h = self.hidden
        if self.mla is not None:
            m = self.mla
            qk_head = m.qk_nope_head_dim + m.qk_rope_head_dim
            if m.q_lora_rank:
                q = h * m.q_lora_rank + self._norm_params(m.q_lora_rank) + m.q_lora_rank * self.num_heads * qk_head
            else:
                q = h * self.num_heads * qk_head
            kv = h * (m.kv_lora_rank + m.qk_rope_head_dim) + self._norm_params(m.kv_lora_rank)
            kv += m.kv_lora_rank * self.num_heads * (m.qk_nope_head_dim + m.v_head_dim)
            out = self.num_heads * m.v_head_dim * h
            return q + kv + out + self._norm_params(h)
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        weights = h * (q + 2 * kv) + q * h
        biases = 0
        if self.linear_bias:
            biases = q + 2 * kv + h
        elif self.qkv_bias:
            biases = q + 2 * kv
        qk_norm = 2 * self.head_dim if self.qk_norm else 0
        return weights + biases + qk_norm + self._norm_params(h)

    def _mlp_params(self, ffn: int) -> int:
        h = self.hidden
        mats = 3 if self.gated_mlp else 2
        bias = (ffn * (mats - 1) + h) if self.linear_bias else 0
        return mats * h * ffn + bias

    def dense_mlp_params(self) -> int:
        """Parameters of one dense MLP block, its pre-norm included."""
        return self._mlp_params(self.ffn_hidden) + self._norm_params(self.hidden)

    def expert_params(self) -> int:
        """Parameters of one routed expert."""
        return self._mlp_params(self.moe_ffn_hidden)

    def moe_mlp_params(self) -> int:
        """Parameters of one MoE block: routed and shared experts, router, pre-norm."""
        router = self.hidden * self.num_experts + (self.num_experts if self.router_bias else 0)
        shared = self.num_shared_experts * self.expert_params()
        return self.num_experts * self.expert_params() + shared + router + self._norm_params(self.hidden)

    def embedding_params(self) -> int:
        """Token (and learned position) embedding, plus an embedding norm where present."""
        extra = self._norm_params(self.hidden) if self.embedding_norm else 0
        return (self.vocab + self.learned_positions) * self.hidden + extra

    def lm_head_params(self) -> int:
        """Output projection to the vocabulary (0 when tied) plus the final norm."""
        return (0 if self.tied_embeddings else self.vocab * self.hidden) + self._norm_params(self.hidden)

    def total_params(self) -> int:
        """Every parameter of the model."""
        return (
            self.num_layers * self.attention_params()
            + self.num_mlp_dense_layers * self.dense_mlp_params()
            + self.num_moe_layers * self.moe_mlp_params()
            + self.embedding_params()
            + self.lm_head_params()
        )

    def active_params(self) -> int:
        """Parameters one token passes through (routed experts counted `moe_topk` times, not all)."""
        inactive = (self.num_experts - self.moe_topk) * self.expert_params() if self.is_moe else 0
        return self.total_params() - self.num_moe_layers * inactive

    def expert_params_total(self) -> int:
        """Parameters of all routed experts of the model (the part that expert parallelism shards)."""
        return self.num_moe_layers * self.num_experts * self.expert_params()
