"""Peak memory per GPU: model states by ZeRO stage, activations in flight, logits, buffers, overhead.

Vectorised over a `StrategyTable`; every function returns one value per row. Pipeline stages other than
the first and last hold neither the embedding nor the LM head and fewer activations than the first, so the
worst stage is the first or the last: both are computed and the larger is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.specs.model import ModelSpec
from meshplan.specs.workload import TrainWorkload
from meshplan.strategy import RECOMPUTE_CODES, SCHEDULE_CODES, StrategyTable

# Bytes per parameter of mixed-precision Adam (Megatron-LM theoretical_memory_usage: 18 bytes/param;
# ZeRO, Rajbhandari et al. 2020 §3.1, counts 2 + 2 + 12 with 16-bit gradients).
WEIGHT_BYTES = 2  # bytes/param, bf16/fp16 working weights
GRAD_BYTES = 4  # bytes/param, fp32 gradient accumulation buffer (Megatron main_grad)
OPTIMIZER_BYTES = 12  # bytes/param, fp32 master weights + Adam m + v
ACT_BYTES = 2  # bytes/element, bf16 activations
LOGIT_BYTES = 4  # bytes/element, fp32 logits for the loss (Korthikanti et al. 2022, §4.1: 4sbv/t)
# CUDA context, cuBLAS/cuDNN workspaces and NCCL communicator buffers: ~0.5 GB context + ~1 GB NCCL/workspaces,
# as seen in torch.cuda.memory_reserved vs nvidia-smi on H100 (stated, not fitted).
FRAMEWORK_OVERHEAD_BYTES = 1.5e9  # bytes per GPU

NONE, SELECTIVE, FULL = (RECOMPUTE_CODES.index(r) for r in ("none", "selective", "full"))
INTERLEAVED, GPIPE = SCHEDULE_CODES.index("interleaved"), SCHEDULE_CODES.index("gpipe")


@dataclass(frozen=True)
class MemoryBreakdown:
    """Peak bytes per GPU on the worst pipeline stage, by kind (arrays, one value per strategy)."""

    weights: np.ndarray
    gradients: np.ndarray
    optimizer: np.ndarray
    activations: np.ndarray
    logits: np.ndarray
    buffers: np.ndarray
    overhead: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.buffers + self.overhead

    def as_dict(self, i: int) -> dict[str, float]:
        return {k: float(getattr(self, k)[i]) for k in self.__dataclass_fields__}


def num_microbatches(t: StrategyTable, workload: TrainWorkload) -> np.ndarray:
    """Micro-batches per step on each data-parallel rank: global batch / (dp · micro-batch)."""
    return workload.global_batch // np.maximum(t.dp * t.micro_batch, 1)


def stage_params(model: ModelSpec, t: StrategyTable) -> dict[str, np.ndarray]:
    """Parameters held by one GPU: dense (sharded by tp) and routed-expert (by tp·ep), first and last stage.

    Layers are spread evenly over stages (MoE and dense layers pro rata); the first stage adds the embedding,
    the last the LM head (a tied head is a second copy when pp > 1, as in Megatron).
    """
    pp, tp = t.pp.astype(float), t.tp.astype(float)
    moe_nonexpert = model.attention_params() + (model.moe_mlp_params() - model.num_experts * model.expert_params())
    dense_layers = model.num_mlp_dense_layers * (model.attention_params() + model.dense_mlp_params() if model.ffn_hidden else 0)
    body = (dense_layers + model.num_moe_layers * moe_nonexpert) / pp / tp
    experts = model.expert_params_total() / pp / (tp * t.ep)
    head = model.lm_head_params() / tp  # untied head + final norm
    second_copy = np.where(pp > 1, model.vocab * model.hidden / tp, 0.0) if model.tied_embeddings else 0.0
    embed = model.embedding_params() / tp
    first = body + embed + np.where(pp > 1, 0.0, head)
    last = np.where(pp > 1, body + head + second_copy, first)  # one stage is both first and last
    return {"first": first, "last": last, "experts": experts}


def activation_bytes_per_layer(model: ModelSpec, workload: TrainWorkload, t: StrategyTable, moe: bool) -> np.ndarray:
    """Activations one layer stores for one micro-batch (bytes per GPU).

    Korthikanti et al. 2022, §4.1, eq. 1-2 and Table 2, generalised to GQA, gated MLPs and MoE: for
    multi-head attention with a 4h GELU MLP and dropout this is s·b·h·(34 + 5·a·s/h) without parallelism,
    s·b·h·(10 + 24/t + 5·a·s/(h·t)) with tensor parallelism, all of it / t with sequence parallelism;
    selective recomputation drops the s² terms (so does a fused flash-attention kernel); full
    recomputation keeps only the layer input, 2·s·b·h (/ t with sequence parallelism).
    """
    s = workload.seq_len / t.cp
    b = t.micro_batch.astype(float)
    tp = t.tp.astype(float)
    sbh = s * b * model.hidden
    drop = 1.0 if model.dropout else 0.0
    # Not split by tp without sequence parallelism: 2 norm inputs, QKV input, MLP input (2 B each), dropout masks.
    replicated = sbh * (4 * ACT_BYTES + 2 * drop)
    # Split by tp (heads / FFN columns): Q and K for the scores, V, attention output, MLP intermediates.
    attn = s * b * ACT_BYTES * (model.q_dim + model.kv_dim + model.v_dim + model.attn_out_dim)
    if moe:
        ffn = model.moe_ffn_hidden * (model.moe_topk + model.num_shared_experts)
        dispatch = s * b * model.hidden * ACT_BYTES * model.moe_topk  # routed token copies
    else:
        ffn, dispatch = model.ffn_hidden, 0.0
    mlp = s * b * ffn * ACT_BYTES * (3 if model.gated_mlp else 2) + dispatch
    if workload.flash_attention:  # fp32 log-sum-exp per head and query (Dao et al. 2022, Alg. 2)
        scores = s * b * model.num_heads * 4.0
        scores_selective = scores
    else:  # softmax output (2 B), dropout mask (1 B) and dropout output (2 B) per score: 5·a·s²·b
        scores = model.num_heads * s * workload.seq_len * b * (ACT_BYTES + 3.0 * drop)
        scores_selective = 0.0
    sp = t.sequence_parallel
    split = (attn + mlp) / tp
    base = np.where(sp, replicated / tp, replicated) + split
    stored = base + np.where(t.recompute == SELECTIVE, scores_selective, scores) / tp
    layer_input = np.where(sp, sbh * ACT_BYTES / tp, sbh * ACT_BYTES)
    return np.where(t.recompute == FULL, layer_input, stored)


def microbatches_in_flight(t: StrategyTable, workload: TrainWorkload) -> tuple[np.ndarray, np.ndarray]:
    """Micro-batches whose activations the (first, last) stage holds at its peak.

    1F1B: the first stage holds pp, the last one (Narayanan et al. 2021, §2.2.1). Interleaved: the first stage
    holds the equivalent of pp + (pp-1)/vpp (Korthikanti et al. 2022, §4.2.3: factor 1 + (p-1)/(p·m)).
    GPipe: every stage holds all m. No pipeline: one (gradient accumulation runs micro-batches in turn).
    """
    m = num_microbatches(t, workload).astype(float)
    pp, vpp = t.pp.astype(float), t.vpp.astype(float)
    first = np.where(t.schedule == INTERLEAVED, pp + (pp - 1) / vpp, pp)
    first = np.minimum(np.where(t.schedule == GPIPE, m, first), m)
    last = np.where(t.schedule == GPIPE, m, 1.0)
    return np.where(pp > 1, first, 1.0), np.where(pp > 1, last, 1.0)


def memory_breakdown(model: ModelSpec, workload: TrainWorkload, t: StrategyTable) -> MemoryBreakdown:
    """Peak memory per GPU on the worse of the first and last pipeline stage."""
    params = stage_params(model, t)
    shard = (t.dp * t.cp).astype(float)  # ZeRO shards over every replica of the weights
    expert_shard = np.maximum(shard / t.ep, 1.0)
    z = t.zero
    states: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for stage in ("first", "last"):
        dense, experts = params[stage], params["experts"]

        def sharded(bytes_per_param: int, from_stage: int) -> np.ndarray:
            split = z >= from_stage
            return bytes_per_param * (np.where(split, dense / shard, dense) + np.where(split, experts / expert_shard, experts))

        states[stage] = (sharded(WEIGHT_BYTES, 3), sharded(GRAD_BYTES, 2), sharded(OPTIMIZER_BYTES, 1))

    per_stage_layers = model.num_layers / t.pp
    dense_frac = model.num_mlp_dense_layers / model.num_layers
    act_layer = dense_frac * activation_bytes_per_layer(model, workload, t, moe=False)
    if model.is_moe:
        act_layer = act_layer + (1 - dense_frac) * activation_bytes_per_layer(model, workload, t, moe=True)
    # Full recomputation re-materialises one layer at a time during backward.
    working = np.where(t.recompute == FULL, _uncheckpointed_layer(model, workload, t), 0.0)
    in_first, in_last = microbatches_in_flight(t, workload)
    act_first = per_stage_layers * act_layer * in_first + working
    act_last = per_stage_layers * act_layer * in_last + working
    logits = LOGIT_BYTES * workload.seq_len / t.cp * t.micro_batch * model.vocab / t.tp * in_last
    layer_params = (model.attention_params() + max(model.dense_mlp_params(), model.moe_mlp_params() if model.is_moe else 0)) / t.tp
    zero3_buffers = np.where(z == 3, 2 * WEIGHT_BYTES * layer_params, 0.0)  # current + prefetched layer, unsharded

    total_first = sum(states["first"]) + act_first
    total_last = sum(states["last"]) + act_last + logits
    use_last = total_last >= total_first
    pick = lambda a, b: np.where(use_last, b, a)  # noqa: E731
    n = len(t)
    return MemoryBreakdown(
        weights=pick(states["first"][0], states["last"][0]),
        gradients=pick(states["first"][1], states["last"][1]),
        optimizer=pick(states["first"][2], states["last"][2]),
        activations=pick(act_first, act_last),
        logits=np.where(use_last, logits, 0.0),
        buffers=zero3_buffers * np.ones(n),
        overhead=np.full(n, FRAMEWORK_OVERHEAD_BYTES),
    )


def _uncheckpointed_layer(model: ModelSpec, workload: TrainWorkload, t: StrategyTable) -> np.ndarray:
    """Activations of one layer without recomputation (the working set while a checkpoint is replayed)."""
    none = StrategyTable(**{**t.__dict__, "recompute": np.full(len(t), NONE)})
    return activation_bytes_per_layer(model, workload, none, moe=model.is_moe)
