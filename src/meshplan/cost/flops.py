"""FLOPs of a transformer, GEMM by GEMM.

A GEMM of an (M x K) activation with a (K x N) weight costs 2·M·N·K FLOPs forward and twice that backward
(Narayanan et al. 2021, §5.1, eq. 3: 'a factor of 3' for forward + backward, 4 with full recomputation).
Listing the GEMMs, rather than using 6·N·tokens, lets the cost model give each one its own size-dependent
efficiency and split it correctly under tensor parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from meshplan.specs.model import ModelSpec, windowed_prompt_context


@dataclass(frozen=True)
class Gemm:
    """One weight matmul of a layer, before any parallel split."""

    name: str
    n: int
    """Output features."""
    k: int
    """Input features (contraction)."""
    tp_split: Literal["n", "k", "none"]
    """Which dim tensor parallelism splits: column-parallel 'n', row-parallel 'k', or replicated."""
    uses_per_token: float = 1.0
    """How often one token passes through it (top-k for a routed expert)."""
    expert: bool = False
    """A routed expert: runs on the tokens dispatched to it, sharded by expert parallelism."""

    @property
    def flops_per_token(self) -> float:
        """Forward FLOPs per token: 2·n·k per use."""
        return 2.0 * self.n * self.k * self.uses_per_token


def attention_gemms(model: ModelSpec) -> list[Gemm]:
    """Projections of one attention block (Megatron split: QKV column-, output row-parallel)."""
    h = model.hidden
    if model.mla is not None:  # DeepSeek-V2/V3 multi-head latent attention: down-projections replicated
        m = model.mla
        qk_head = m.qk_nope_head_dim + m.qk_rope_head_dim
        gemms = []
        if m.q_lora_rank:
            gemms += [Gemm("q_down", m.q_lora_rank, h, "none"), Gemm("q_up", model.num_heads * qk_head, m.q_lora_rank, "n")]
        else:
            gemms += [Gemm("q", model.num_heads * qk_head, h, "n")]
        gemms += [
            Gemm("kv_down", m.kv_lora_rank + m.qk_rope_head_dim, h, "none"),
            Gemm("kv_up", model.num_heads * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank, "n"),
            Gemm("attn_out", h, model.num_heads * m.v_head_dim, "k"),
        ]
        return gemms
    return [
        Gemm("qkv", model.q_dim + 2 * model.kv_dim, h, "n"),
        Gemm("attn_out", h, model.attn_out_dim, "k"),
    ]


def _mlp(model: ModelSpec, ffn: int, prefix: str, uses: float, expert: bool) -> list[Gemm]:
    up = ffn * (2 if model.gated_mlp else 1)
    return [Gemm(f"{prefix}_up", up, model.hidden, "n", uses, expert), Gemm(f"{prefix}_down", model.hidden, ffn, "k", uses, expert)]


def dense_mlp_gemms(model: ModelSpec) -> list[Gemm]:
    """A dense MLP: up (and gate) column-parallel, down row-parallel."""
    return _mlp(model, model.ffn_hidden, "mlp", 1.0, False)


def moe_mlp_gemms(model: ModelSpec) -> list[Gemm]:
    """An MoE block: router, top-k routed experts, shared experts."""
    gemms = [Gemm("router", model.num_experts, model.hidden, "none")]
    gemms += _mlp(model, model.moe_ffn_hidden, "expert", float(model.moe_topk), True)
    if model.num_shared_experts:
        gemms += _mlp(model, model.moe_ffn_hidden, "shared_expert", float(model.num_shared_experts), False)
    return gemms


def lm_head_gemm(model: ModelSpec) -> Gemm:
    """The output projection to the vocabulary (vocab-parallel, column split)."""
    return Gemm("lm_head", model.vocab, model.hidden, "n")


def attention_core_flops_per_token(model: ModelSpec, seq_len: int, causal_skip: bool) -> float:
    """Forward FLOPs of QKᵀ and softmax·V for one token against a context of `seq_len`.

    Full: 2·s·(q_dim + v_dim) (PaLM, Chowdhery et al. 2022, App. B: the 12·L·H·Q·T term / 3 passes / L).
    Fused causal kernels skip the masked upper triangle: half of that (Dao 2023, FlashAttention-2 §3.1.1), and
    on sliding-window layers also the blocks left of the window, so a token at position i attends min(i, W)
    (Beltagy et al. 2020, Longformer §3.1): the mean over layers of `windowed_prompt_context(s/2)`. Without the
    skip the masked scores are computed anyway: 2·s per query on every layer.
    """
    full = 2.0 * seq_len * (model.q_dim + model.attn_out_dim)
    if not causal_skip:
        return full
    if not model.sliding_window_layers:
        return full / 2.0
    attended = windowed_prompt_context(seq_len / 2.0, model.sliding_window, model.windowed_share)
    return 2.0 * attended * (model.q_dim + model.attn_out_dim)


def layer_gemm_flops_per_token(model: ModelSpec) -> tuple[float, float]:
    """Forward GEMM FLOPs per token of (a dense layer, an MoE layer)."""
    attn = sum(g.flops_per_token for g in attention_gemms(model))
    dense = attn + sum(g.flops_per_token for g in dense_mlp_gemms(model)) if model.ffn_hidden else 0.0
    moe = attn + sum(g.flops_per_token for g in moe_mlp_gemms(model)) if model.is_moe else 0.0
    return dense, moe


def model_flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """Model FLOPs per trained token, forward + backward, no recomputation, full attention (PaLM App. B).

    This is the numerator of MFU: 3 x (every GEMM + attention scores) forward.
    """
    dense, moe = layer_gemm_flops_per_token(model)
    layers = model.num_mlp_dense_layers * dense + model.num_moe_layers * moe
    attn_core = model.num_layers * attention_core_flops_per_token(model, seq_len, causal_skip=False)
    return 3.0 * (layers + attn_core + lm_head_gemm(model).flops_per_token)
