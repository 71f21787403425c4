"""Prefill/decode disaggregation (Zhong et al. 2024, DistServe; Patel et al. 2024, Splitwise): x prefill
workers run prompts only, y decode workers run decode-only iterations, and each request's KV cache moves
from its prefill worker to a decode worker over the network.

Steady state: the prefill pool completes prompts at x / t_prefill(one chunk) · chunk / prompt requests/s, the
decode pool at y·B / (osl · t_decode(B)); the deployment runs at the smaller of the two (and the offered load).
TTFT = prefill of the prompt + KV transfer (+ waiting when the prefill pool is the bottleneck or busy);
TPOT = one decode-only iteration at batch B, free of prefill interference (the point of disaggregating).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from meshplan.cost.comm import Links, p2p_time
from meshplan.cost.efficiency import default_efficiency
from meshplan.errors import PlanError
from meshplan.serve.capacity import capacity, kv_bytes_per_token
from meshplan.serve.cost import TERM_SOURCES, iteration_model
from meshplan.serve.deployment import Deployment, DeploymentTable, check_deployment
from meshplan.serve.efficiency import ServingEfficiency
from meshplan.serve.engines import DEFAULTS
from meshplan.serve.workload import ServeWorkload
from meshplan.specs import ClusterSpec, ModelSpec, make_cluster

if TYPE_CHECKING:
    from meshplan.serve.estimate import DisaggWorkers, ServeEstimate, ServeRequest

GB = 1e9  # bytes per displayed GB


def _side(req: ServeRequest, w: DisaggWorkers) -> Deployment:
    defaults = DEFAULTS[req.engine]
    kv = req.kv_dtype or ("fp8" if req.precision in ("fp8", "fp4") else req.precision)
    return Deployment(tp=w.tp, pp=w.pp, ep=w.ep, attn_dp=w.attn_dp, replicas=w.workers, precision=req.precision,
                      kv_dtype=kv,  # type: ignore[arg-type]
                      max_batch=w.batch or defaults.max_batch, chunk_tokens=req.chunk_tokens or defaults.chunk_tokens)


def estimate_disagg(req: ServeRequest, model: ModelSpec, cluster: ClusterSpec, work: ServeWorkload,
                    eff: ServingEfficiency) -> ServeEstimate:
    from meshplan.serve.estimate import ServeEstimate, provenance

    assert req.disagg is not None
    pre, dec = _side(req, req.disagg.prefill), _side(req, req.disagg.decode)
    for side in (pre, dec):
        check_deployment(side, model)
    num_gpus = pre.num_gpus + dec.num_gpus
    if req.num_gpus is not None and req.num_gpus != num_gpus:
        raise PlanError(f"num_gpus={req.num_gpus} != prefill + decode GPUs = {pre.num_gpus} + {dec.num_gpus}; "
                        "fix the worker counts")
    gpu = cluster.gpu
    cluster = make_cluster(gpu, max(pre.gpus_per_instance, dec.gpus_per_instance), gpus_per_node=req.gpus_per_node)
    tp_, td = DeploymentTable.of([pre]), DeploymentTable.of([dec])
    cap_p = capacity(model, gpu, tp_, eff.memory_fraction, eff.runtime_bytes)
    cap_d = capacity(model, gpu, td, eff.memory_fraction, eff.runtime_bytes)
    for name, cap, side in (("prefill", cap_p, pre), ("decode", cap_d, dec)):
        if not cap.fits[0]:
            raise PlanError(f"{model.name} does not fit the {name} workers ({side.label()}): "
                            f"{-float(cap.kv_budget_bytes[0]) / eff.memory_fraction / GB:.1f} GB missing per GPU; "
                            "raise their tp/pp")
    it_p = iteration_model(model, cluster, tp_, eff, req.engine)
    it_d = iteration_model(model, cluster, td, eff, req.engine)
    prompt = work.prefill_tokens
    ctx = work.isl + work.osl / 2.0
    # Prefill pool: prompts packed into chunks of chunk_tokens.
    chunk = float(min(pre.chunk_tokens, max(prompt, 1.0)))
    t_chunk = float(it_p.time(0.0, 0.0, chunk, prompt / 2.0)[0])
    prefill_rate = pre.replicas * chunk / prompt / t_chunk  # requests/s
    one_prompt = math.ceil(prompt / chunk) * t_chunk
    # KV transfer of one request: its cache over the network link of one GPU (Splitwise §4.3).
    links = Links.of(cluster, default_efficiency())
    kv_bytes = float(kv_bytes_per_token(model, td)[0]) * dec.tp * dec.pp * model.kv_tokens_held(float(work.isl))
    transfer = float(p2p_time(np.array(kv_bytes / max(pre.tp * pre.pp, 1)), np.array(True), links))
    # Decode pool.
    seq_cap = float(cap_d.max_sequences(ctx)[0])
    in_flight = (work.concurrency / dec.replicas) if work.concurrency is not None else math.inf
    b = max(1.0, min(in_flight, dec.max_batch, seq_cap))
    tpot = float(it_d.time(b, ctx, 0.0, 0.0)[0])
    decode_rate = dec.replicas * b / (work.osl * tpot)
    offered = work.request_rate if work.request_rate is not None else math.inf
    rate = min(prefill_rate, decode_rate, offered)
    ttft = one_prompt + transfer + eff.request_overhead_for(req.engine)
    if work.concurrency is not None:
        cycle = work.concurrency / rate
        ttft = max(ttft, cycle - (work.osl - 1) * tpot)
    elif offered < math.inf:
        rho = min(offered / prefill_rate, 0.999)
        ttft += rho / (2 * (1 - rho)) * one_prompt / pre.replicas  # M/D/1 wait at the prefill pool
    total = rate * work.osl
    terms = it_d.terms(b, ctx, 0.0, 0.0)
    breakdown = {k: float(v[0]) * 1e3 for k, v in terms.items()}
    return ServeEstimate(
        model=model.name, gpu=gpu.name, num_gpus=num_gpus, deployment=dec, workload=work, engine=req.engine,
        ttft_ms=ttft * 1e3, tpot_ms=tpot * 1e3, output_tokens_per_s_total=total,
        output_tokens_per_s_per_gpu=total / num_gpus, output_tokens_per_s_per_user=1.0 / tpot, fits=True,
        percentiles={}, batch=b, kv_capacity_tokens=float(cap_d.kv_tokens[0]),
        memory_gb={"weights": float(cap_d.weights_bytes[0]) / GB, "kv_cache": float(cap_d.kv_budget_bytes[0]) / GB},
        breakdown=breakdown, formulas=TERM_SOURCES, provenance=provenance(eff, cluster, req.engine, False),
        disagg={"prefill": pre.model_dump(), "decode": dec.model_dump(),
                "prefill_requests_per_s": prefill_rate, "decode_requests_per_s": decode_rate,
                "kv_transfer_ms": transfer * 1e3, "bottleneck": "prefill" if prefill_rate < decode_rate else "decode"},
    )
