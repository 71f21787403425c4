"""A Llama-style decoder built from a `ModelSpec`: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU
(or a mixture-of-experts layer), seeded initialisation.

Weights are laid out so that Megatron-style tensor parallelism needs no extra collectives: the fused QKV
projection keeps each KV group's query, key and value rows together ([q_g, k_g, v_g] per group), and the
fused gate/up projection interleaves gate and up rows, so a contiguous column-parallel shard holds whole
groups and matching gate/up rows. The same layout runs unchanged on one process.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from meshplan.specs.model import ModelSpec

INIT_STD = 0.02  # standard deviation of the normal initialisation of every weight matrix (GPT-2 / Llama)
ROPE_THETA = 10000.0  # rotary base


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _rope(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding over (batch, seq, heads, head_dim), positions 0..seq-1."""
    seq, dim = x.shape[1], x.shape[-1]
    inv = 1.0 / (ROPE_THETA ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim))
    angles = torch.outer(torch.arange(seq, device=x.device, dtype=torch.float32), inv)
    cos, sin = angles.cos()[None, :, None, :].to(x.dtype), angles.sin()[None, :, None, :].to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.head_dim = spec.head_dim
        self.q_per_group = spec.num_heads // spec.num_kv_heads
        self.wqkv = nn.Linear(spec.hidden, (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim, bias=False)
        self.wo = nn.Linear(spec.num_heads * spec.head_dim, spec.hidden, bias=False)
        self.checkpoint_core = False  # selective recomputation of QKᵀ, softmax and ·V

    def _core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[0], x.shape[1]
        y = self.wqkv(x)
        groups = y.shape[-1] // ((self.q_per_group + 2) * self.head_dim)  # local KV groups under TP
        y = y.view(b, s, groups, self.q_per_group + 2, self.head_dim)
        q = _rope(y[:, :, :, : self.q_per_group].reshape(b, s, groups * self.q_per_group, self.head_dim))
        k = _rope(y[:, :, :, self.q_per_group])
        v = y[:, :, :, self.q_per_group + 1]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        k = k.repeat_interleave(self.q_per_group, dim=1)
        v = v.repeat_interleave(self.q_per_group, dim=1)
        if self.checkpoint_core and torch.is_grad_enabled():
            out = checkpoint(self._core, q, k, v, use_reentrant=False)
        else:
            out = self._core(q, k, v)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(gate) * up), gate and up rows interleaved in one matrix."""

    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.w13 = nn.Linear(hidden, 2 * ffn, bias=False)
        self.w2 = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.w13(x).unflatten(-1, (-1, 2))
        return self.w2(F.silu(y[..., 0]) * y[..., 1])


class MoE(nn.Module):
    """Top-k routed experts (softmax over the chosen logits, as Mixtral) plus optional shared experts."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.topk = spec.moe_topk
        self.router = nn.Linear(spec.hidden, spec.num_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(spec.hidden, spec.moe_ffn_hidden) for _ in range(spec.num_experts))
        shared = spec.num_shared_experts * spec.moe_ffn_hidden
        self.shared = FeedForward(spec.hidden, shared) if shared else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weights, chosen = self.router(flat).topk(self.topk, dim=-1)
        weights = weights.softmax(dim=-1)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            # An expert without tokens still runs (on zero rows): its weights get zero gradients, so every rank
            # of a sharded or replicated group reduces the same set of gradients.
            token, slot = (chosen == e).nonzero(as_tuple=True)
            out = out.index_add(0, token, expert(flat[token]) * weights[token, slot, None])
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view_as(x)


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, moe: bool) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(spec.hidden)
        self.attention = Attention(spec)
        self.ffn_norm = RMSNorm(spec.hidden)
        self.feed_forward: nn.Module = MoE(spec) if moe else FeedForward(spec.hidden, spec.ffn_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class Decoder(nn.Module):
    """Token embedding, blocks (a ModuleDict keyed by layer index, so pipeline stages can drop theirs' peers),
    final norm and LM head. A stage without an embedding takes hidden states; one without a head returns them."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.tok_embeddings: nn.Module | None = nn.Embedding(spec.vocab, spec.hidden)
        self.layers = nn.ModuleDict({
            str(i): Block(spec, moe=spec.is_moe and i >= spec.num_dense_layers) for i in range(spec.num_layers)
        })
        self.norm: nn.Module | None = RMSNorm(spec.hidden)
        self.output: nn.Module | None = nn.Linear(spec.hidden, spec.vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(x) if self.tok_embeddings is not None else x
        for layer in self.layers.values():
            h = layer(h)
        if self.norm is not None:
            h = self.norm(h)
        return self.output(h) if self.output is not None else h


def build_model(spec: ModelSpec, seed: int) -> Decoder:
    """The full model with seeded weights: normal(0, 0.02) matrices and embeddings, unit norm gains."""
    torch.manual_seed(seed)
    model = Decoder(spec)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, INIT_STD)
    return model


def check_executable(spec: ModelSpec) -> None:
    """Refuse specs this decoder cannot build exactly (it is Llama-style)."""
    from meshplan.errors import PlanError

    if spec.mla is not None:
        raise PlanError(f"model {spec.name}: multi-head latent attention is not built by the executor; "
                        "pass --model with a GQA model")
    if spec.num_heads * spec.head_dim <= 0 or math.gcd(spec.num_heads, spec.num_kv_heads) != spec.num_kv_heads:
        raise PlanError(f"model {spec.name}: heads={spec.num_heads} not a multiple of kv_heads={spec.num_kv_heads}")
