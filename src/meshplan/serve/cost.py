"""Time of one scheduler iteration of a serving instance, roofline per operator, vectorised over deployments.

One iteration (a 'round' when pp > 1: every one of the pp micro-batches passes every stage once) processes
`d` decoding sequences (one token each, mean context `c`) and `p` prompt tokens (mean causal context `cp`).
Per GPU of the busiest stage:
- linear layers: max(FLOPs / achieved peak, weight bytes / achieved HBM bandwidth) — prefill is compute-bound,
  small-batch decode is bound by reading the weights (Pope et al. 2022, §3.1-3.2; roofline, Williams et al. 2009),
  taken per operator: the dense GEMMs and the routed-expert GEMMs are separate kernels, each at its own bound
  (a prefill's dense GEMMs are compute-bound while its experts, a few tokens each, may still be bound by reading
  them); routed experts are read only when some token picks them: 1 - (1 - k/E)^tokens of them; the grouped expert
  GEMMs also stream each routed token's activations through HBM (permute, gate/up out, activation, down in,
  unpermute: 2·hidden + 6·moe_ffn elements per token and expert; Gale et al. 2023, MegaBlocks §3), which
  at large batches outweighs the few FLOPs of a small expert;
- attention: max(2·(q_dim + o_dim)·context FLOPs per token per layer, KV-cache bytes read) (Pope et al. 2022, §2),
  where a sliding-window layer's context is at most its window (Beltagy et al. 2020, Longformer §3.1; Jiang et
  al. 2023, Mistral 7B §2; gpt-oss windows every other layer, OpenAI gpt-oss model card 2025): the mean over
  layers of the tokens attended, `ModelSpec.attended_context`;
- tensor parallel: 2 all-reduces per layer of tokens·hidden activations (Narayanan et al. 2021, §3.2); inside
  one node the engines' own one-shot all-reduce (vLLM custom_all_reduce, TensorRT-LLM AllReduceStrategy
  ONESHOT, SGLang's custom all-reduce: every rank reads its k-1 peers' buffers over NVLink) costs one exchange
  and one flag synchronisation, 2α + (k-1)·n/bw, where NCCL's tree costs 2·log2(k)·α (Thakur et al. 2005);
  the engine takes the faster, so at small batches a latency of 2α per all-reduce dominates;
- expert parallel: all-to-all dispatch and combine per MoE layer of tokens·top-k·hidden (GShard, Lepikhin 2020);
- pipeline: one activation send per stage boundary and micro-batch (Narayanan et al. 2021, §4.1);
- a fixed time per iteration (engine scheduling) and per sequence in flight (sampling, bookkeeping), fitted.
The coefficients are computed once per deployment; `IterationModel.time` is plain arithmetic, so the
discrete-event simulation calls it per iteration cheaply.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace

import numpy as np

from meshplan.cost.comm import Links, all_reduce_time, all_to_all_time, p2p_time
from meshplan.cost.efficiency import default_efficiency
from meshplan.cost.flops import lm_head_gemm
from meshplan.serve.capacity import ACTIVATION_BYTES, kv_bytes_per_token, weight_bytes_per_gpu
from meshplan.serve.deployment import DeploymentTable
from meshplan.serve.efficiency import ServingEfficiency
from meshplan.specs.cluster import ClusterSpec
from meshplan.specs.model import ModelSpec, windowed_context, windowed_prompt_context

TERMS = ("overhead", "linear", "attention", "tp_comm", "ep_comm", "pp_p2p")
TERM_SOURCES = {
    "overhead": "fixed time per iteration (engine) and per sequence in flight, fitted to the published serving runs",
    "linear": "GEMMs: max(FLOPs / achieved peak, weight bytes / achieved HBM bandwidth); Pope et al. 2022 §3",
    "attention": "max(2(q+o)·context FLOPs, KV-cache bytes / achieved HBM bandwidth); Pope et al. 2022 §2",
    "tp_comm": "2 all-reduces/layer of tokens·hidden: min(one-shot 2α + (k-1)n/bw in a node, NCCL tree/ring); "
               "Thakur et al. 2005",
    "ep_comm": "all-to-all dispatch + combine per MoE layer, tokens·top-k·hidden; Lepikhin et al. 2020",
    "pp_p2p": "activation send per stage boundary and micro-batch; Narayanan et al. 2021 §4.1",
}


def compute_dtype(precision: str, gpu_peaks: Collection[str]) -> str:
    """The tensor-core dtype a precision computes in: itself when the GPU has it, else the next wider one
    (fp4 weights on Hopper run fp8 GEMMs; fp8 on Ampere runs fp16)."""
    for dtype in {"fp4": ("fp4", "fp8", "bf16"), "fp8": ("fp8", "bf16")}.get(precision, (precision, "bf16")):
        if dtype in gpu_peaks:
            return dtype
    return "bf16"


@dataclass(frozen=True)
class IterationModel:
    """Per-deployment coefficients of the iteration time (arrays, one entry per deployment)."""

    fixed_s: np.ndarray
    per_sequence_s: float
    dense_weights_s: np.ndarray
    """Reading the non-expert weights of a GPU, for all pp micro-batches of a round."""
    expert_weights_s: np.ndarray
    """Reading all routed-expert weights of a GPU, for all pp micro-batches (scaled by the share touched)."""
    linear_s_per_token: np.ndarray
    """FLOP time of the dense (non-expert) GEMMs per token."""
    expert_linear_s_per_token: np.ndarray
    """FLOP time of the routed-expert GEMMs per token (top-k experts)."""
    lm_head_s_per_token: np.ndarray
    moe_act_s_per_token: np.ndarray
    """HBM time of the routed tokens' activations in the expert GEMMs, per token."""
    attn_s_per_token_ctx: np.ndarray
    kv_s_per_token_ctx: np.ndarray
    tp_latency_s: np.ndarray
    tp_s_per_token: np.ndarray
    ep_latency_s: np.ndarray
    ep_s_per_token: np.ndarray
    pp_latency_s: np.ndarray
    pp_s_per_token: np.ndarray
    pp: np.ndarray
    expert_pick: float
    """Probability that one token routes to a given expert (top-k / experts); 0 for dense models."""
    sliding_window: float = 0.0
    """Tokens a sliding-window layer attends to (0: none)."""
    windowed_share: float = 0.0
    """Share of the layers with the sliding window (a stage is taken to hold its share of them, as with
    gpt-oss's alternating layers)."""

    def take(self, index: int | np.ndarray) -> IterationModel:
        fields = {k: (v[index] if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}
        return IterationModel(**fields)

    def terms(self, d: np.ndarray | float, c: np.ndarray | float, p: np.ndarray | float,
              cp: np.ndarray | float) -> dict[str, np.ndarray]:
        """Each term of one iteration's time, seconds (broadcast over deployments and loads)."""
        tokens = np.asarray(d, dtype=np.float64) + p
        touched = 1.0 - (1.0 - self.expert_pick) ** np.maximum(tokens / self.pp, 1.0) if self.expert_pick else 0.0
        linear = (np.maximum(tokens * self.linear_s_per_token + np.asarray(d) * self.lm_head_s_per_token,
                             self.dense_weights_s)
                  + np.maximum(tokens * self.expert_linear_s_per_token,
                               self.expert_weights_s * touched + tokens * self.moe_act_s_per_token))
        # Sliding-window layers attend at most their window. The window caps the mean context c, not each
        # sequence's: exact when the batch's sequences are all past the window (or all inside it).
        c = windowed_context(np.asarray(c, dtype=np.float64), self.sliding_window, self.windowed_share)
        cp = windowed_prompt_context(np.asarray(cp, dtype=np.float64), self.sliding_window, self.windowed_share)
        attention = np.maximum((np.asarray(d) * c + np.asarray(p) * cp) * self.attn_s_per_token_ctx,
                               np.asarray(d) * c * self.kv_s_per_token_ctx)
        return {
            "overhead": self.fixed_s + np.asarray(d) * self.per_sequence_s + 0.0 * tokens,
            "linear": linear,
            "attention": attention,
            "tp_comm": self.tp_latency_s + tokens * self.tp_s_per_token,
            "ep_comm": self.ep_latency_s + tokens * self.ep_s_per_token,
            "pp_p2p": self.pp_latency_s + tokens * self.pp_s_per_token,
        }

    def time(self, d: np.ndarray | float, c: np.ndarray | float, p: np.ndarray | float,
             cp: np.ndarray | float) -> np.ndarray:
        """Seconds of one iteration (a full pipeline round)."""
        return sum(self.terms(d, c, p, cp).values())  # type: ignore[return-value]


def _tp_all_reduce(bytes_per_token: float, tp: np.ndarray, links: Links,
                   nccl_step_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(latency s, s per token) of one tensor-parallel all-reduce, the lower envelope of the algorithms engines
    switch between by message size: small (decode) messages take the one-shot kernel inside a node (2α: write,
    flag sync; NCCL's tree needs 2·log2(k)·α), large (prefill) ones a bandwidth-optimal ring / two-shot,
    2(k-1)/k·n/bw. An engine without the one-shot kernel (`nccl_step_s` given) pays NCCL's tree in a node,
    with `nccl_step_s` as the step latency α."""
    one = np.ones_like(tp, dtype=np.float64)
    if nccl_step_s is not None:
        links = replace(links, intra_latency_s=nccl_step_s)
    nccl_lat = all_reduce_time(0.0 * one, tp, one, links)
    ring_slope = all_reduce_time(bytes_per_token * one, tp, one, links) - nccl_lat
    if nccl_step_s is not None:
        return nccl_lat, ring_slope
    in_node = (tp > 1) & (tp <= links.gpus_per_node)
    return np.where(in_node, np.minimum(2.0 * links.intra_latency_s, nccl_lat), nccl_lat), ring_slope


def iteration_model(model: ModelSpec, cluster: ClusterSpec, t: DeploymentTable, eff: ServingEfficiency,
                    engine: str = "trtllm") -> IterationModel:
    """The coefficients of `IterationModel` for every deployment of `t`."""
    gpu = cluster.gpu
    hbm = gpu.hbm_bytes_per_s * eff.hbm  # bytes/s achieved
    compute_eff, _ = eff.compute_for(gpu)
    peaks = np.array([gpu.peak_flops[compute_dtype(d.precision, gpu.peak_flops)]  # type: ignore[index]
                      for d in t.rows])
    low = np.array([compute_dtype(d.precision, gpu.peak_flops) in ("fp8", "fp4") for d in t.rows])
    linear_flops_s = peaks * compute_eff * np.where(low, eff.low_precision_ratio, 1.0)  # FLOP/s achieved
    attn_flops_s = gpu.peak("bf16") * compute_eff * eff.attention_ratio  # FLOP/s achieved (bf16 attention)

    layers_per_stage = model.num_layers / t.pp
    experts = float(model.expert_params_total())
    weights = weight_bytes_per_gpu(model, t)
    expert_bytes = t.weight_bytes * experts / (t.tp * t.attn_dp * t.pp)
    # A decode step reads every weight once, except the input embedding, of which it looks up a few rows
    # (a tied embedding is read whole as the LM head).
    embedding = 0.0 if model.tied_embeddings else float(model.embedding_params())
    dense_bytes = weights - expert_bytes - t.weight_bytes * embedding / (t.tp * t.pp)
    # FLOPs per token of one stage's linear layers (2 per active parameter, Kaplan et al. 2020 §2.1),
    # non-expert part split over tp within an attention-DP rank, routed experts over all tp·attn_dp GPUs.
    lm_head = float(lm_head_gemm(model).n * lm_head_gemm(model).k)
    active_experts = model.num_moe_layers * model.moe_topk * model.expert_params() if model.is_moe else 0
    active_dense = float(model.active_params() - active_experts) - lm_head - model.embedding_params()
    linear_per_token = 2.0 * active_dense / t.pp / (t.tp * t.attn_dp) / linear_flops_s
    expert_linear_per_token = 2.0 * active_experts / t.pp / (t.tp * t.attn_dp) / linear_flops_s
    lm_head_per_token = 2.0 * lm_head / (t.tp * t.attn_dp) / linear_flops_s
    moe_act_bytes = (model.num_moe_layers * model.moe_topk * (2.0 * model.hidden + 6.0 * model.moe_ffn_hidden)
                     * ACTIVATION_BYTES) if model.is_moe else 0.0  # bytes per token, all MoE layers
    moe_act_per_token = moe_act_bytes / (t.pp * t.tp * t.attn_dp) / hbm
    # Attention core: 2·(q_dim + o_dim) FLOPs per token per context token per layer (PaLM App. B, forward).
    attn_per_token_ctx = 2.0 * (model.q_dim + model.attn_out_dim) * layers_per_stage / (t.tp * t.attn_dp) / attn_flops_s
    kv_per_token_ctx = kv_bytes_per_token(model, t) / t.attn_dp / hbm

    links = Links.of(cluster, default_efficiency())
    act_bytes_per_token = model.hidden * ACTIVATION_BYTES
    one = np.ones_like(t.tp)
    # A pipeline round runs every layer once per micro-batch, over pp micro-batches: L all-reduces' latency
    # per micro-batch and stage... the stage does pp·(L/pp) = L layer passes per round.
    ar_lat, ar_slope = _tp_all_reduce(act_bytes_per_token, t.tp, links, eff.allreduce_step_latency_for(engine))
    num_ar = 2.0 * model.num_layers
    tp_latency = num_ar * ar_lat
    tp_per_token = num_ar * ar_slope / t.attn_dp
    moe_group = t.tp * t.attn_dp
    moe_comm = model.is_moe & ((t.ep > 1) | (t.attn_dp > 1))
    a2a_lat = all_to_all_time(0.0 * one, moe_group, one, links)
    a2a_slope = all_to_all_time(act_bytes_per_token * max(model.moe_topk, 1) * one, moe_group, one, links) - a2a_lat
    num_a2a = 2.0 * model.num_moe_layers
    ep_latency = np.where(moe_comm, num_a2a * a2a_lat, 0.0)
    ep_per_token = np.where(moe_comm, num_a2a * a2a_slope / t.attn_dp, 0.0)
    crosses = t.tp * t.attn_dp * t.pp > cluster.gpus_per_node
    p2p_lat = p2p_time(0.0 * one, crosses, links)
    p2p_slope = p2p_time(act_bytes_per_token * one, crosses, links) - p2p_lat
    pp_latency = np.where(t.pp > 1, t.pp * p2p_lat, 0.0)
    pp_per_token = np.where(t.pp > 1, p2p_slope / t.attn_dp, 0.0)

    return IterationModel(
        fixed_s=eff.overhead_for(engine) * one, per_sequence_s=eff.sequence_overhead_s,
        dense_weights_s=t.pp * dense_bytes / hbm,
        expert_weights_s=t.pp * expert_bytes / hbm,
        linear_s_per_token=linear_per_token, expert_linear_s_per_token=expert_linear_per_token,
        lm_head_s_per_token=lm_head_per_token,
        moe_act_s_per_token=moe_act_per_token,
        attn_s_per_token_ctx=attn_per_token_ctx, kv_s_per_token_ctx=kv_per_token_ctx,
        tp_latency_s=tp_latency, tp_s_per_token=tp_per_token, ep_latency_s=ep_latency, ep_s_per_token=ep_per_token,
        pp_latency_s=pp_latency, pp_s_per_token=pp_per_token, pp=t.pp,
        expert_pick=model.moe_topk / model.num_experts if model.is_moe else 0.0,
        sliding_window=float(model.sliding_window), windowed_share=model.windowed_share,
    )
