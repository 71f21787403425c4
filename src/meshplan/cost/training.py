"""The training cost model: step time with its breakdown, throughput, MFU and peak memory, vectorised.

step = m·t_max + (pp-1)/vpp·t_mean            (pipeline: m micro-batches at the slowest stage's pace,
                                                plus the fill/drain bubble; Narayanan et al. 2021, §2.2)
     + pipeline sends + exposed data-parallel sync + optimizer step

where a stage's time per micro-batch t = compute (GEMMs at a size-dependent efficiency, attention core,
memory-bound element-wise work, recomputation) + tensor-parallel collectives + exposed context-parallel
exchange + expert-parallel all-to-all. One implementation for one strategy or a million: every quantity
below is a numpy column over the rows of a `StrategyTable`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from meshplan.cost import flops as F
from meshplan.cost.comm import Links, all_gather_time, all_reduce_time, all_to_all_time, p2p_time, reduce_scatter_time
from meshplan.cost.efficiency import HBM_EFFICIENCY, Efficiency
from meshplan.cost.memory import (
    ACT_BYTES,
    FULL,
    GRAD_BYTES,
    SELECTIVE,
    WEIGHT_BYTES,
    MemoryBreakdown,
    memory_breakdown,
    num_microbatches,
    stage_params,
    STAGES,
)
from meshplan.cost.stages import stage_layers
from meshplan.specs.cluster import ClusterSpec
from meshplan.specs.gpu import GpuSpec
from meshplan.specs.model import ModelSpec
from meshplan.specs.workload import TrainWorkload
from meshplan.strategy import StrategyTable

# Adam step traffic per parameter: read+write fp32 master, m, v (24 B), read fp32 grad (4 B), write bf16
# weight (2 B), read grad again for the norm/clipping (4 B).
ADAM_BYTES_PER_PARAM = 34  # bytes/param
# Tensor-parallel collectives per transformer layer (Megatron layout: column- then row-parallel in attention and
# in the MLP): the outputs of the two row-parallel GEMMs are all-reduced forward, the inputs' gradients of the two
# column-parallel GEMMs backward; under sequence parallelism each becomes an all-gather + reduce-scatter pair
# of the same volume (Korthikanti et al. 2022 §4.2.2). The executor's CommDebugMode counts match (tests).
TP_COLLECTIVES_FORWARD = 2  # per layer
TP_COLLECTIVES_BACKWARD = 2  # per layer

BREAKDOWN_KEYS = (
    "compute", "recompute", "tp_comm", "cp_comm", "ep_comm", "pp_bubble", "pp_p2p", "dp_comm", "optimizer",
)
BREAKDOWN_SOURCES = {
    "compute": "GEMMs x3 (Narayanan 2021 eq. 3), roofline efficiency; attention (PaLM App. B); element-wise HBM",
    "recompute": "extra forward: all layers (full) or attention core (selective); Korthikanti 2022 §5",
    "tp_comm": "4 all-reduces/layer/micro-batch, 6 with full recompute; Narayanan 2021 §3.2, Korthikanti 2022 §4.2.2",
    "cp_comm": "K/V ring, (cp-1) steps fwd, 2(cp-1) bwd, behind attention compute; Liu 2023 §3",
    "ep_comm": "2 all-to-alls per MoE layer fwd, 2 bwd; GShard (Lepikhin 2020)",
    "pp_bubble": "(pp-1)/vpp stage times; Narayanan 2021 §2.2",
    "pp_p2p": "activation send/recv per micro-batch and chunk, scattered over tp; Narayanan 2021 §4.1",
    "dp_comm": "gradient/parameter sync by ZeRO stage, minus overlap with backward; Rajbhandari 2020 §7",
    "optimizer": "Adam step, memory-bound, 34 B/param over HBM bandwidth",
}


@dataclass(frozen=True)
class TrainingCost:
    """Predicted figures per strategy (numpy columns, one value per row of the table)."""

    step_time_s: np.ndarray
    breakdown: dict[str, np.ndarray]
    """Seconds per step by term (BREAKDOWN_KEYS); they sum to `step_time_s`."""
    memory: MemoryBreakdown
    tokens_per_s: np.ndarray
    tokens_per_s_per_gpu: np.ndarray
    tflops_per_gpu: np.ndarray
    """Model FLOP/s per GPU / 1e12 (PaLM App. B counting: no recomputation, full attention)."""
    mfu: np.ndarray
    """Model FLOP/s utilisation against the peak of the training precision."""
    hfu: np.ndarray
    """Hardware FLOP/s utilisation: recomputation counted."""
    peak_memory_bytes: np.ndarray
    fits: np.ndarray
    provenance: dict[str, str] = field(default_factory=dict)

    def take(self, rows: np.ndarray) -> TrainingCost:
        """The rows selected by a boolean mask or an index array."""
        return TrainingCost(**{f.name: _map_columns(getattr(self, f.name), lambda a: a[rows]) for f in fields(self)})

    def concat(self, other: TrainingCost) -> TrainingCost:
        """These rows followed by `other`'s."""
        return TrainingCost(**{f.name: _zip_columns(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})


def _map_columns(value: Any, fn: Callable[[np.ndarray], np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        return fn(value)
    if isinstance(value, MemoryBreakdown):
        return MemoryBreakdown(**{k: fn(getattr(value, k)) for k in MemoryBreakdown.__dataclass_fields__})
    if isinstance(value, dict) and value and isinstance(next(iter(value.values())), np.ndarray):
        return {k: fn(v) for k, v in value.items()}
    return value  # provenance: the same for every row


def _zip_columns(a: Any, b: Any) -> Any:
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b])
    if isinstance(a, MemoryBreakdown):
        return MemoryBreakdown(**{k: np.concatenate([getattr(a, k), getattr(b, k)]) for k in MemoryBreakdown.__dataclass_fields__})
    if isinstance(a, dict) and a and isinstance(next(iter(a.values())), np.ndarray):
        return {k: np.concatenate([a[k], b[k]]) for k in a}
    return a


def _gemm_efficiency(m: np.ndarray, n: np.ndarray, k: np.ndarray, elem_bytes: float, peak: float,
                     hbm_bytes_per_s: float, gemm_eff: float, ridge_factor: float) -> np.ndarray:
    """Achieved fraction of peak for an (M×K)·(K×N) GEMM.

    Roofline-shaped (Williams et al. 2009): arithmetic intensity I = 2MNK / (bytes·(MK + KN + MN)) FLOP/byte;
    efficiency = e_max · I / (I + c·I_ridge), I_ridge = peak / HBM bandwidth, so small or skinny GEMMs
    (large tp, small micro-batches, narrow experts) fall below the large-GEMM plateau e_max.
    """
    intensity = 2.0 * m * n * k / (elem_bytes * (m * k + k * n + m * n))
    ridge = peak / hbm_bytes_per_s
    return gemm_eff * intensity / (intensity + ridge_factor * ridge)


@dataclass(frozen=True)
class _Ctx:
    """Per-call constants shared by the helpers below."""

    model: ModelSpec
    workload: TrainWorkload
    cluster: ClusterSpec
    eff: Efficiency
    links: Links
    gemm_eff: float
    peak_bf16: float
    peak_gemm: float
    gemm_eff_precision: float
    elem_bytes: float


def _gemm_time(ctx: _Ctx, gemms: list[F.Gemm], tokens: np.ndarray, t: StrategyTable, low_precision: bool) -> np.ndarray:
    """Forward time of `gemms` for `tokens` tokens on one GPU."""
    total = np.zeros(len(t))
    hbm = ctx.cluster.gpu.hbm_bytes_per_s
    for g in gemms:
        split = t.tp.astype(float) if g.tp_split != "none" else np.ones(len(t))
        n = g.n / t.tp if g.tp_split == "n" else np.full(len(t), float(g.n))
        k = g.k / t.tp if g.tp_split == "k" else np.full(len(t), float(g.k))
        rows = tokens * g.uses_per_token * t.ep / ctx.model.num_experts if g.expert else tokens
        peak, e_max, nbytes = (ctx.peak_gemm, ctx.gemm_eff_precision, ctx.elem_bytes) if low_precision else (
            ctx.peak_bf16, ctx.gemm_eff, float(ACT_BYTES))
        eff = _gemm_efficiency(np.maximum(rows, 1.0), n, k, nbytes, peak, hbm, e_max, ctx.eff.ridge_factor)
        total += tokens * g.flops_per_token / split / (peak * eff)
    return total


def _elementwise_bytes_per_token(model: ModelSpec, workload: TrainWorkload, moe: bool) -> tuple[float, float]:
    """Forward HBM traffic per token of a layer's non-GEMM kernels: (not split by tp without SP, split by tp).

    Norms 2×(read+write 2h B), residual adds 2×(2 reads + 1 write of 2h B), dropout (read, write, mask) where
    present; rotary on Q/K; the MLP activation; token permutation for MoE; unfused softmax over the scores.
    """
    h = model.hidden
    replicated = (8 + 12 + (10 if model.dropout else 0)) * h
    ffn = model.moe_ffn_hidden * (model.moe_topk + model.num_shared_experts) if moe else model.ffn_hidden
    split = 4 * (model.q_dim + model.kv_dim) + (6 if model.gated_mlp else 4) * ffn
    if moe:
        split += 8 * h * model.moe_topk
    if not workload.flash_attention:
        split += model.num_heads * workload.seq_len * (4 + (5 if model.dropout else 0))
    return float(replicated), float(split)


def _layer_times(ctx: _Ctx, t: StrategyTable, moe: bool) -> dict[str, np.ndarray]:
    """Per micro-batch, one layer: forward compute, recompute, TP, CP and EP communication (seconds)."""
    model, w = ctx.model, ctx.workload
    tokens = w.seq_len / t.cp * t.micro_batch
    gemms = F.attention_gemms(model) + (F.moe_mlp_gemms(model) if moe else F.dense_mlp_gemms(model))
    low = w.precision == "fp8"
    router = [g for g in gemms if g.name == "router"]
    fwd_gemm = _gemm_time(ctx, [g for g in gemms if g.name != "router"], tokens, t, low)
    fwd_gemm = fwd_gemm + (_gemm_time(ctx, router, tokens, t, False) if router else 0.0)
    attn_flops = F.attention_core_flops_per_token(model, w.seq_len, causal_skip=w.flash_attention)
    attn_eff: float | np.ndarray
    if w.flash_attention:  # one fused kernel at its own fraction of the GEMM rate
        attn_eff = ctx.gemm_eff * ctx.eff.attention_ratio
    else:  # batched GEMMs per head, QKᵀ: (s x d)·(d x s), scores through HBM (softmax counted as element-wise)
        ctx_len = np.full(len(t), float(w.seq_len))
        attn_eff = _gemm_efficiency(np.maximum(tokens / t.micro_batch, 1.0), ctx_len, np.full(len(t), float(model.head_dim)),
                                    float(ACT_BYTES), ctx.peak_bf16, ctx.cluster.gpu.hbm_bytes_per_s, ctx.gemm_eff,
                                    ctx.eff.ridge_factor)
    fwd_attn = tokens * attn_flops / t.tp / (ctx.peak_bf16 * attn_eff)
    rep, split = _elementwise_bytes_per_token(model, w, moe)
    ew_bytes = tokens * (np.where(t.sequence_parallel, rep / t.tp, rep) + split / t.tp)
    fwd_ew = ew_bytes / (ctx.cluster.gpu.hbm_bytes_per_s * HBM_EFFICIENCY)
    fwd = fwd_gemm + fwd_attn + fwd_ew
    recompute = np.where(t.recompute == FULL, fwd, np.where(t.recompute == SELECTIVE, fwd_attn, 0.0))

    act_bytes = tokens * model.hidden * ACT_BYTES
    tp_ops = TP_COLLECTIVES_FORWARD * np.where(t.recompute == FULL, 2.0, 1.0) + TP_COLLECTIVES_BACKWARD
    exposed = 1.0 - (ctx.eff.tp_overlap if w.tp_comm_overlap else 0.0)
    tp_comm = exposed * tp_ops * all_reduce_time(act_bytes, t.tp, np.ones(len(t)), ctx.links)

    kv_bytes = 2.0 * tokens * model.kv_dim * ACT_BYTES / t.tp
    cp_cross = t.tp * t.cp > ctx.cluster.gpus_per_node
    cp_step = p2p_time(kv_bytes, cp_cross, ctx.links)
    cp_fwd = np.maximum((t.cp - 1) * cp_step - fwd_attn, 0.0)
    cp_bwd = np.maximum(2 * (t.cp - 1) * cp_step - 2 * fwd_attn, 0.0)
    cp_comm = np.where(t.cp > 1, cp_fwd * np.where(t.recompute == FULL, 2.0, 1.0) + cp_bwd, 0.0)

    if moe:
        a2a_bytes = np.where(t.sequence_parallel, tokens / t.tp, tokens) * model.moe_topk * model.hidden * ACT_BYTES
        a2a_ops = np.where(t.recompute == FULL, 6.0, 4.0)
        ep_comm = a2a_ops * all_to_all_time(a2a_bytes, t.ep, t.tp, ctx.links)
    else:
        ep_comm = np.zeros(len(t))
    return {"fwd": fwd, "recompute": recompute, "tp_comm": tp_comm, "cp_comm": cp_comm, "ep_comm": ep_comm}


def _context(model: ModelSpec, cluster: ClusterSpec, workload: TrainWorkload, eff: Efficiency) -> _Ctx:
    gpu = cluster.gpu
    peak_bf16 = gpu.peak("fp16" if workload.precision == "fp16" else "bf16")
    gemm_eff, _ = eff.gemm_for(gpu)
    low = workload.precision == "fp8"
    return _Ctx(model, workload, cluster, eff, Links.of(cluster, eff), gemm_eff, peak_bf16,
                gpu.peak("fp8") if low else peak_bf16, gemm_eff * (eff.fp8_ratio if low else 1.0), 1.0 if low else 2.0)


@dataclass(frozen=True)
class LayerTimes:
    """One micro-batch through one layer of each kind, and through the model's edges (seconds, one per row)."""

    layer_s: dict[str, np.ndarray]
    """Per kind ("dense", "moe" where present): forward+backward compute, recomputation and collectives."""
    head_s: np.ndarray
    """LM head forward+backward GEMM."""
    edge_comm_s: np.ndarray
    """Vocab-parallel embedding (first stage) or LM-head (last stage) all-reduce, each."""


def layer_times(model: ModelSpec, cluster: ClusterSpec, workload: TrainWorkload, t: StrategyTable,
                eff: Efficiency) -> LayerTimes:
    """The per-layer terms `training_cost` sums into a stage, kept apart by layer kind (for non-uniform plans)."""
    ctx = _context(model, cluster, workload, eff)
    tokens = workload.seq_len / t.cp * t.micro_batch
    kinds = ([("dense", False)] if model.num_mlp_dense_layers else []) + ([("moe", True)] if model.is_moe else [])
    out = {}
    for name, moe in kinds:
        p = _layer_times(ctx, t, moe=moe)
        # Backward costs twice the forward (Narayanan et al. 2021 eq. 3).
        out[name] = 3.0 * p["fwd"] + p["recompute"] + p["tp_comm"] + p["cp_comm"] + p["ep_comm"]
    head = 3.0 * _gemm_time(ctx, [F.lm_head_gemm(model)], tokens, t, False)
    edge = all_reduce_time(tokens * model.hidden * ACT_BYTES, t.tp, np.ones(len(t)), ctx.links)
    return LayerTimes(out, head, edge)


def training_cost(model: ModelSpec, cluster: ClusterSpec, workload: TrainWorkload, t: StrategyTable,
                  eff: Efficiency) -> TrainingCost:
    """Predict step time, throughput, MFU and memory for every row of `t` (rows are assumed valid)."""
    gpu = cluster.gpu
    ctx = _context(model, cluster, workload, eff)
    gemm_eff, eff_source = eff.gemm_for(gpu)
    peak_precision = gpu.peak(workload.precision)
    n = len(t)
    m = num_microbatches(t, workload).astype(float)
    tokens = workload.seq_len / t.cp * t.micro_batch
    ones = np.ones(n)

    # --- one micro-batch through one stage -----------------------------------------------------------
    dense_frac = model.num_mlp_dense_layers / model.num_layers
    per_layer = {k: dense_frac * v for k, v in _layer_times(ctx, t, moe=False).items()} if dense_frac else None
    if model.is_moe:
        moe_t = _layer_times(ctx, t, moe=True)
        per_layer = moe_t if per_layer is None else {k: per_layer[k] + (1 - dense_frac) * moe_t[k] for k in moe_t}
    assert per_layer is not None
    # Backward costs twice the forward (Narayanan et al. 2021 eq. 3).
    layer_compute = 3.0 * per_layer["fwd"]
    layer_time = layer_compute + per_layer["recompute"] + per_layer["tp_comm"] + per_layer["cp_comm"] + per_layer["ep_comm"]
    head_compute = 3.0 * _gemm_time(ctx, [F.lm_head_gemm(model)], tokens, t, False)
    act_bytes = tokens * model.hidden * ACT_BYTES
    edge_comm = all_reduce_time(act_bytes, t.tp, ones, ctx.links)  # vocab-parallel embedding / LM-head gather
    sl = stage_layers(model.num_layers, t)
    single = t.pp == 1
    stage_time = np.stack([
        sl.first * layer_time + edge_comm + np.where(single, head_compute + edge_comm, 0.0),
        sl.middle * layer_time,
        np.where(single, 0.0, sl.last * layer_time + head_compute + edge_comm),
    ])
    crit = np.argmax(stage_time, axis=0)  # 0 first, 1 middle, 2 last: the stage that sets the pace
    mean = (model.num_layers * layer_time + head_compute + 2.0 * edge_comm) / t.pp
    crit_layers = np.choose(crit, [sl.first, sl.middle, sl.last])
    crit_head = single | (crit == 2)
    crit_edges = np.where(single, 2.0, np.where(crit == 1, 0.0, 1.0))
    crit_compute = crit_layers * layer_compute + np.where(crit_head, head_compute, 0.0)
    crit_recompute = crit_layers * per_layer["recompute"]

    # --- pipeline ----------------------------------------------------------------------------------------
    bubble = (1.0 - eff.pp_bubble_hidden) * (t.pp - 1) / t.vpp * mean
    p2p_bytes = act_bytes / t.tp
    pp_cross = t.tp * t.cp * t.dp >= cluster.gpus_per_node
    p2p = np.where(t.pp > 1, 2.0 * (m * t.vpp + t.pp - 1) * p2p_time(p2p_bytes, pp_cross, ctx.links), 0.0)

    # --- data-parallel synchronisation (group dp·cp, stride tp; experts over dp·cp/ep, stride tp·ep) -----
    params = stage_params(model, t)
    dense_p = np.max([params[k] for k in STAGES], axis=0)
    expert_p = np.max([params[f"{k}_experts"] for k in STAGES], axis=0)
    dp_n, dp_stride = (t.dp * t.cp).astype(float), t.tp.astype(float)
    ex_n, ex_stride = np.maximum(dp_n / t.ep, 1.0), (t.tp * t.ep).astype(float)

    def sync(op, bytes_per_param: float) -> np.ndarray:  # type: ignore[no-untyped-def]
        return op(bytes_per_param * dense_p, dp_n, dp_stride, ctx.links) + op(bytes_per_param * expert_p, ex_n, ex_stride, ctx.links)

    compute_mb = crit_compute + crit_recompute
    # the last micro-batch's backward hides the gradient sync, the first one's forward the parameter gather
    bwd_window = eff.dp_overlap * (2.0 / 3.0) * crit_compute
    fwd_window = eff.dp_overlap * crit_compute / 3.0
    grad_ar = sync(all_reduce_time, GRAD_BYTES)
    grad_rs = sync(reduce_scatter_time, GRAD_BYTES)
    param_ag = sync(all_gather_time, WEIGHT_BYTES)
    # ZeRO-3 / FSDP gathers and reduce-scatters one layer at a time: `layers` collectives of 1/layers the size
    # each, so the ring latency is paid per layer (forward gather, backward gather, gradient reduce-scatter).
    units = np.maximum(np.max([sl.first, sl.middle, sl.last], axis=0), 1.0)  # layers on the largest stage
    layer_ag = units * (all_gather_time(WEIGHT_BYTES * dense_p / units, dp_n, dp_stride, ctx.links)
                        + all_gather_time(WEIGHT_BYTES * expert_p / units, ex_n, ex_stride, ctx.links))
    layer_rs = units * (reduce_scatter_time(GRAD_BYTES * dense_p / units, dp_n, dp_stride, ctx.links)
                        + reduce_scatter_time(GRAD_BYTES * expert_p / units, ex_n, ex_stride, ctx.links))
    zero3_mb = 2.0 * layer_ag + layer_rs
    # ZeRO-0/1 keep full gradients and reduce once per step; ZeRO-2 keeps only its shard, so it must
    # reduce-scatter after every micro-batch's backward (DeepSpeed stage 2 with gradient accumulation).
    exposed_rs = np.maximum(grad_rs - bwd_window, 0.0)
    once = exposed_rs + np.maximum(param_ag - fwd_window, 0.0)  # one gather and one reduce-scatter per step
    # ZeRO-3 under PP gathers each layer once and reduce-scatters it after the last micro-batch:
    # torch.distributed.pipelining keeps the stage unsharded between micro-batches (`set_reshard_after_backward
    # (False)`, no gradient sync until the last), but FSDP still moves one unit (layer) per collective.
    zero3_pp = np.maximum(layer_rs - bwd_window, 0.0) + np.maximum(layer_ag - fwd_window, 0.0)
    zero3 = np.where(t.pp > 1, zero3_pp, m * (np.maximum(zero3_mb - eff.dp_overlap * compute_mb, 0.0) + zero3_mb / units))
    dp_comm = np.select(
        [t.zero == 0, t.zero == 1, t.zero == 2],
        [np.maximum(grad_ar - bwd_window, 0.0), once, m * exposed_rs + np.maximum(param_ag - fwd_window, 0.0)],
        zero3,
    )
    dp_comm = np.where(dp_n > 1, dp_comm, 0.0)

    # --- optimizer ---------------------------------------------------------------------------------------
    shard = np.where(t.zero >= 1, dp_n, 1.0)
    opt_params = dense_p / shard + expert_p / np.where(t.zero >= 1, ex_n, 1.0)
    optimizer = opt_params * ADAM_BYTES_PER_PARAM / (gpu.hbm_bytes_per_s * HBM_EFFICIENCY)

    # --- assemble: the slowest stage's terms x m, the rest as they are -------------------------------------
    breakdown = {
        "compute": m * crit_compute,
        "recompute": m * crit_recompute,
        "tp_comm": m * (crit_layers * per_layer["tp_comm"] + crit_edges * edge_comm),
        "cp_comm": m * crit_layers * per_layer["cp_comm"],
        "ep_comm": m * crit_layers * per_layer["ep_comm"],
        "pp_bubble": bubble,
        "pp_p2p": p2p,
        "dp_comm": dp_comm,
        "optimizer": optimizer,
    }
    step = sum(breakdown.values())
    assert isinstance(step, np.ndarray)

    tokens_per_step = float(workload.tokens_per_step)
    model_flops = F.model_flops_per_token(model, workload.seq_len) * tokens_per_step
    recompute_share = np.select([t.recompute == FULL, t.recompute == SELECTIVE], [1.0 / 3.0, 0.0], 0.0)
    selective_flops = model.num_layers * F.attention_core_flops_per_token(model, workload.seq_len, False) * tokens_per_step
    hw_flops = model_flops * (1.0 + recompute_share) + np.where(t.recompute == SELECTIVE, selective_flops, 0.0)
    num_gpus = float(cluster.num_gpus)
    memory = _zero3_pipeline_peak(_scaled_memory(memory_breakdown(model, workload, t), eff), t)
    peak_mem = memory.total
    return TrainingCost(
        step_time_s=step,
        breakdown=breakdown,
        memory=memory,
        tokens_per_s=tokens_per_step / step,
        tokens_per_s_per_gpu=tokens_per_step / step / num_gpus,
        tflops_per_gpu=model_flops / step / num_gpus / 1e12,
        mfu=model_flops / step / num_gpus / peak_precision,
        hfu=hw_flops / step / num_gpus / peak_precision,
        peak_memory_bytes=peak_mem,
        fits=peak_mem <= gpu.hbm_bytes,
        provenance={
            "knowledge_layer": eff.layer,
            "peak_flops": _peak_provenance(gpu, workload.precision, peak_precision, eff),
            "gemm_efficiency": f"{gemm_eff:.3f}{eff_source}",
            "attention_efficiency": f"{eff.attention_ratio:.2f} x GEMM efficiency ({'fused' if workload.flash_attention else 'unfused'}), {eff.source}",
            "bandwidth_efficiency": f"NVLink {eff.intra_node_bandwidth:.2f}, network {eff.inter_node_bandwidth:.2f} of link rate (nccl-tests bus bandwidth, not fitted)"
            if eff.layer != "measured profile" else
            f"{eff.intra_node_bandwidth:.2f} of the profile's achieved α-β bandwidth ({eff.source})",
            "links": "cluster spec (datasheet defaults unless overridden)" if eff.layer != "measured profile"
            else f"measured profile: {gpu.sources.get('links', 'collective microbenchmarks')}",
            "memory": "Korthikanti et al. 2022 activations; 2+4+12 B/param model states by ZeRO stage"
            + ("" if eff.memory_state_scale == 1.0 and eff.memory_activation_scale == 1.0 else
               f"; x{eff.memory_state_scale:.3g} states, x{eff.memory_activation_scale:.3g} activations ({eff.source})"),
        },
    )


def _peak_provenance(gpu: GpuSpec, precision: str, peak: float, eff: Efficiency) -> str:
    if eff.layer == "measured profile":
        return f"measured profile: {gpu.name} {peak / 1e9:,.1f} GFLOP/s achieved per device ({gpu.sources.get('peak_flops', '')})"
    return f"datasheet: {gpu.name} {precision} {peak / 1e12:,.0f} TFLOP/s (meshplan gpus --json)"


def _zero3_pipeline_peak(memory: MemoryBreakdown, t: StrategyTable) -> MemoryBreakdown:
    """ZeRO-3 under PP: the pipeline defers the gradient reduce-scatter to the stage's last micro-batch, so the sharded
    gradients come into being after its activations and logits are freed. The peak is the larger of the two
    moments: the backward's (activations and logits, no sharded gradients yet) or the final reduce-scatter's
    (sharded gradients, no activations); the breakdown shows what is alive then. (The stage DP of non-uniform
    plans adds both, a bound above this.)"""
    deferred = (t.zero == 3) & (t.pp > 1) & (memory.buffers > 0)
    at_end = deferred & (memory.gradients > memory.activations + memory.logits)
    in_backward = deferred & ~at_end
    zero = np.zeros_like(memory.gradients)
    return MemoryBreakdown(**{**{k: getattr(memory, k) for k in MemoryBreakdown.__dataclass_fields__},
                              "gradients": np.where(in_backward, zero, memory.gradients),
                              "activations": np.where(at_end, zero, memory.activations),
                              "logits": np.where(at_end, zero, memory.logits)})


def _scaled_memory(memory: MemoryBreakdown, eff: Efficiency) -> MemoryBreakdown:
    """The memory breakdown in the bytes the executor really keeps (a hardware profile's layer; identity otherwise)."""
    if eff.memory_state_scale == 1.0 and eff.memory_activation_scale == 1.0 and eff.memory_overhead_bytes is None:
        return memory
    states, acts = eff.memory_state_scale, eff.memory_activation_scale
    overhead = memory.overhead if eff.memory_overhead_bytes is None else np.full_like(memory.overhead, eff.memory_overhead_bytes)
    return MemoryBreakdown(weights=memory.weights * states, gradients=memory.gradients * states,
                           optimizer=memory.optimizer * states, activations=memory.activations * acts,
                           logits=memory.logits * acts, buffers=memory.buffers * acts, overhead=overhead)
