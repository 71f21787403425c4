"""Peak memory per GPU: model states by ZeRO stage, activations in flight, logits, buffers, overhead.

Vectorised over a `StrategyTable`; every function returns one value per row. The first stage holds the
embedding and the most micro-batches in flight, the last the LM head and the logits, and with an uneven
layer split the second or a middle stage may hold more layers: all four are priced and the largest reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost.stages import stage_layers
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
GATHER_BYTES = 2  # bytes/element, ZeRO-3 weights and gradients while unsharded: the compute dtype (FSDP2 param_dtype)
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


STAGES = ("first", "second", "middle", "last")


def stage_params(model: ModelSpec, t: StrategyTable) -> dict[str, np.ndarray]:
    """Parameters one GPU holds on each stage: dense ones (sharded by tp) and routed experts (by tp·ep).

    Keys: the stages of `StageLayers` (dense parameters) and `<stage>_experts`. MoE and dense layers are
    spread pro rata; the first stage adds the embedding, the last the LM head (a tied head is a second copy
    when pp > 1, as in Megatron).
    """
    layers = stage_layers(model.num_layers, t)
    tp = t.tp.astype(float)
    moe_frac = model.num_moe_layers / model.num_layers
    moe_nonexpert = model.attention_params() + (model.moe_mlp_params() - model.num_experts * model.expert_params())
    dense_layer = model.attention_params() + model.dense_mlp_params() if model.ffn_hidden else 0
    per_layer = ((1 - moe_frac) * dense_layer + moe_frac * moe_nonexpert) / tp
    experts_per_layer = moe_frac * model.num_experts * model.expert_params() / (tp * t.ep)
    head = model.lm_head_params() / tp  # untied head + final norm
    second_copy = np.where(t.pp > 1, model.vocab * model.hidden / tp, 0.0) if model.tied_embeddings else 0.0
    embed = model.embedding_params() / tp
    single = t.pp == 1
    out: dict[str, np.ndarray] = {}
    for stage in STAGES:
        n = getattr(layers, stage)
        extra = {"first": embed + np.where(single, head, 0.0), "last": np.where(single, embed + head, head + second_copy)}
        out[stage] = n * per_layer + extra.get(stage, 0.0)
        out[f"{stage}_experts"] = n * experts_per_layer
    return out


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
    """Peak memory per GPU on the worst pipeline stage (first, second, heaviest middle or last)."""
    params = stage_params(model, t)
    layers = stage_layers(model.num_layers, t)
    shard = (t.dp * t.cp).astype(float)  # ZeRO shards over every replica of the weights
    expert_shard = np.maximum(shard / t.ep, 1.0)
    z = t.zero

    dense_frac = model.num_mlp_dense_layers / model.num_layers
    act_layer = dense_frac * activation_bytes_per_layer(model, workload, t, moe=False)
    if model.is_moe:
        act_layer = act_layer + (1 - dense_frac) * activation_bytes_per_layer(model, workload, t, moe=True)
    # Full recomputation re-materialises one layer at a time during backward.
    working = np.where(t.recompute == FULL, _uncheckpointed_layer(model, workload, t), 0.0)
    in_first, in_last = microbatches_in_flight(t, workload)
    # Under 1F1B stage i holds pp - i micro-batches; the second stage one fewer than the first, a middle one
    # at most as many as the second.
    in_second = np.where(t.pp > 2, np.maximum(in_first - 1.0, in_last), in_last)
    in_flight = {"first": in_first, "second": in_second, "middle": in_second, "last": in_last}
    logits = LOGIT_BYTES * workload.seq_len / t.cp * t.micro_batch * model.vocab / t.tp * in_last

    gathered = _zero3_gathered(model, t)
    best: MemoryBreakdown | None = None
    for stage in STAGES:
        dense, experts = params[stage], params[f"{stage}_experts"]

        def sharded(bytes_per_param: int, from_stage: int, dense: np.ndarray = dense,
                    experts: np.ndarray = experts) -> np.ndarray:
            split = z >= from_stage
            return bytes_per_param * (np.where(split, dense / shard, dense) + np.where(split, experts / expert_shard, experts))

        candidate = MemoryBreakdown(
            weights=sharded(WEIGHT_BYTES, 3),
            gradients=sharded(GRAD_BYTES, 2),
            optimizer=sharded(OPTIMIZER_BYTES, 1),
            activations=getattr(layers, stage) * act_layer * in_flight[stage] + working,
            logits=logits if stage == "last" else np.zeros(len(t)),
            # under PP the stage's weights and gradients stay unsharded until its last micro-batch
            buffers=np.where((z == 3) & (shard > 1), np.where(t.pp > 1, 2 * GATHER_BYTES * (dense + experts), gathered), 0.0),
            overhead=np.full(len(t), FRAMEWORK_OVERHEAD_BYTES),
        )
        if best is None:
            best = candidate
        else:
            worse = candidate.total > best.total
            best = MemoryBreakdown(**{k: np.where(worse, getattr(candidate, k), getattr(best, k))
                                      for k in MemoryBreakdown.__dataclass_fields__})
    assert best is not None
    return best


def _zero3_gathered(model: ModelSpec, t: StrategyTable) -> np.ndarray:
    """Unsharded bytes ZeRO-3 holds at the start of backward without PP, FSDP2 wrapped as torchtitan does (one unit
    per block, the embedding, and the final norm with the LM head; the head unit is not resharded after forward,
    its backward follows at once): the head's weights and its gradient before the reduce-scatter, and the last
    block's weights prefetched (PyTorch FSDP2 docs, `fully_shard(reshard_after_forward)`; torchtitan
    `apply_fsdp`). Under PP, torch.distributed.pipelining keeps a stage's weights and gradients unsharded until
    its last micro-batch (`set_requires_gradient_sync(False)`, `set_reshard_after_backward(False)`)."""
    layer = (model.attention_params() + max(model.dense_mlp_params(), model.moe_mlp_params() if model.is_moe else 0)) / t.tp
    # the head unit: the output projection (the embedding matrix itself when tied) and the final norm
    head = (model.lm_head_params() + (model.vocab * model.hidden if model.tied_embeddings else 0)) / t.tp
    return GATHER_BYTES * (2 * head + layer)


def _uncheckpointed_layer(model: ModelSpec, workload: TrainWorkload, t: StrategyTable) -> np.ndarray:
    """Activations of one layer without recomputation (the working set while a checkpoint is replayed)."""
    none = StrategyTable(**{**t.__dict__, "recompute": np.full(len(t), NONE)})
    return activation_bytes_per_layer(model, workload, none, moe=model.is_moe)
