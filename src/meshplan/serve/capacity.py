"""Memory of a serving instance: weights per GPU, KV cache per token, and how many sequences fit.

Weights follow the layer structure of `ModelSpec`; the KV cache holds keys and values of every layer
(Pope et al. 2022, §2: 2·layers·kv_heads·head_dim values per token; MLA caches the compressed latent,
kv_lora_rank + qk_rope_head_dim per layer, DeepSeek-V2 §2.1). A sliding-window layer keeps only the last
`sliding_window` tokens of a sequence: engines allocate it no more (vLLM's hybrid KV-cache manager, SGLang's SWA
memory pool, TensorRT-LLM's variable sliding-window attention), so a sequence of n tokens takes
`ModelSpec.kv_tokens_held(n)` full-model tokens. Everything is vectorised over a `DeploymentTable`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.serve.deployment import DeploymentTable
from meshplan.specs.gpu import GpuSpec
from meshplan.specs.model import ModelSpec, windowed_context

ACTIVATION_BYTES = 2.0  # bytes per activation value (bf16 activations, also with fp8/fp4 weights)


def expert_share(model: ModelSpec) -> float:
    """Parameters of all routed experts (what expert parallelism shards)."""
    return float(model.expert_params_total())


def weight_bytes_per_gpu(model: ModelSpec, t: DeploymentTable) -> np.ndarray:
    """Weights one GPU holds: the non-expert part split over tp·pp (replicated over attention DP), the routed
    experts split over all tp·attn_dp GPUs of a stage (moe_tp·moe_ep) and over pp."""
    experts = expert_share(model)
    dense = float(model.total_params()) - experts
    return t.weight_bytes * (dense / (t.tp * t.pp) + experts / (t.tp * t.attn_dp * t.pp))


def kv_values_per_token_layer(model: ModelSpec, tp: np.ndarray) -> np.ndarray:
    """KV-cache values one GPU stores per token and layer: heads split over tp, but never below one head
    (a KV head is replicated when tp > kv_heads); MLA's latent is replicated over tp."""
    if model.mla is not None:
        return np.full_like(tp, float(model.mla.kv_lora_rank + model.mla.qk_rope_head_dim))
    heads = np.maximum(model.num_kv_heads / tp, 1.0)
    return 2.0 * heads * model.head_dim


def kv_bytes_per_token(model: ModelSpec, t: DeploymentTable) -> np.ndarray:
    """KV-cache bytes one GPU stores per token of a sequence it serves (its pipeline stage's layers)."""
    return kv_values_per_token_layer(model, t.tp) * t.kv_bytes * (model.num_layers / t.pp)


@dataclass(frozen=True)
class Capacity:
    """Memory of one GPU of each deployment (bytes) and KV tokens of one instance."""

    weights_bytes: np.ndarray
    activation_bytes: np.ndarray
    runtime_bytes: np.ndarray
    kv_budget_bytes: np.ndarray
    """Memory left for the KV cache per GPU (negative: the weights do not fit)."""
    kv_bytes_per_token: np.ndarray
    kv_tokens: np.ndarray
    """KV-cache tokens one instance holds (over its attention-DP ranks)."""
    usable_bytes: float
    sliding_window: float = 0.0
    """Tokens a sliding-window layer keeps (0: none); see `ModelSpec.kv_tokens_held`."""
    windowed_share: float = 0.0
    """Share of the layers with the sliding window."""

    @property
    def fits(self) -> np.ndarray:
        return self.kv_budget_bytes > 0

    def max_sequences(self, tokens_per_sequence: float) -> np.ndarray:
        """Sequences of `tokens_per_sequence` tokens that fit in one instance's KV cache at once (windowed layers
        keep only their window of each)."""
        held = windowed_context(max(tokens_per_sequence, 1.0), self.sliding_window, self.windowed_share)
        return np.floor(self.kv_tokens / held)


def capacity(model: ModelSpec, gpu: GpuSpec, t: DeploymentTable, memory_fraction: float,
             runtime_bytes: float) -> Capacity:
    """KV capacity: `memory_fraction` of what is left after weights, one iteration's activations and the runtime."""
    weights = weight_bytes_per_gpu(model, t)
    # Activations of one iteration of chunk_tokens tokens: a few hidden-wide buffers plus the MLP's
    # intermediate split over tp (the engines' profiling run reserves this peak), bf16.
    ffn = max(model.ffn_hidden, model.moe_ffn_hidden * max(model.moe_topk, 1))
    activations = t.chunk_tokens / t.attn_dp * (6.0 * model.hidden + 2.0 * ffn / t.tp) * ACTIVATION_BYTES
    usable = gpu.hbm_bytes
    budget = (usable - weights - activations - runtime_bytes) * memory_fraction
    per_token = kv_bytes_per_token(model, t)
    tokens = np.maximum(budget, 0.0) / per_token * t.attn_dp
    return Capacity(weights_bytes=weights, activation_bytes=activations, runtime_bytes=np.full_like(weights, runtime_bytes),
                    kv_budget_bytes=budget, kv_bytes_per_token=per_token, kv_tokens=tokens, usable_bytes=usable,
                    sliding_window=float(model.sliding_window), windowed_share=model.windowed_share)
