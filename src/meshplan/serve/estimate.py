"""`ServeRequest` → `ServeEstimate`: price one serving deployment (the API behind `meshplan serve --estimate`).

Mean TTFT/TPOT/throughput come from the steady-state model (`steady.py`, the one fitted and checked against
the published runs); percentiles come from the discrete-event simulation of the scheduler (`simulate.py`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from meshplan.errors import PlanError, first_error
from meshplan.serve.capacity import capacity
from meshplan.serve.context import context_tokens
from meshplan.serve.cost import TERM_SOURCES, iteration_model
from meshplan.serve.deployment import Deployment, DeploymentTable, KvDtype, WeightPrecision, check_deployment
from meshplan.serve.efficiency import ServingEfficiency, default_serving_efficiency
from meshplan.serve.engines import DEFAULTS
from meshplan.serve.simulate import PERCENTILES, simulate
from meshplan.serve.steady import steady_state
from meshplan.serve.workload import ServeWorkload, histogram_mean, load_histogram, load_trace, trace_workload
from meshplan.specs import ClusterSpec, ModelSpec, load_gpu, load_model, make_cluster
from meshplan.specs.base import Frozen

GB = 1e9  # bytes per displayed GB


class DisaggWorkers(Frozen):
    """One side of a disaggregated deployment."""

    workers: int = Field(gt=0)
    tp: int = Field(default=1, gt=0)
    pp: int = Field(default=1, gt=0)
    ep: int = Field(default=1, gt=0)
    attn_dp: int = Field(default=1, gt=0)
    batch: int | None = Field(default=None, gt=0)


class Disagg(Frozen):
    prefill: DisaggWorkers
    decode: DisaggWorkers


class ServeRequest(Frozen):
    """One deployment to price; the keys of `meshplan serve --estimate --batch` lines."""

    model: str
    """Preset name or path to a Hugging Face config.json."""
    gpu: str
    num_gpus: int | None = Field(default=None, gt=0)
    """All GPUs; default tp·pp·attn_dp·replicas."""
    tp: int = Field(default=1, gt=0)
    pp: int = Field(default=1, gt=0)
    ep: int = Field(default=1, gt=0)
    attn_dp: int = Field(default=1, gt=0)
    replicas: int | None = Field(default=None, gt=0)
    """Engine instances; default num_gpus / (tp·pp·attn_dp)."""
    precision: WeightPrecision = "bf16"
    kv_dtype: KvDtype | None = None
    """Default: the weight precision (bf16 for fp4 weights on GPUs without... fp8 for fp8/fp4)."""
    isl: int | None = Field(default=None, gt=0)
    """Prompt tokens (mean); from the histogram or trace when one is given."""
    osl: int | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, gt=0)
    request_rate: float | None = None
    """Requests/s; "inf" = all at once."""
    prefix_hit: float = Field(default=0.0, ge=0, lt=1)
    length_cv: float = Field(default=0.0, ge=0, le=2)
    num_requests: int = Field(default=2000, gt=0)
    warmup_requests: int = Field(default=0, ge=0)
    """Requests sent before the measured ones (a benchmark's warm-up); see `ServeWorkload.warmup_requests`."""
    isl_histogram: str | None = None
    """CSV of `tokens,count`: prompt lengths to sample."""
    osl_histogram: str | None = None
    trace: str | None = None
    """CSV of `arrival_s,isl,osl`: requests to replay (sets the rate and mean lengths)."""
    engine: Literal["trtllm", "vllm", "sglang"] = "vllm"
    """Whose scheduler defaults and fitted overheads apply."""
    max_batch: int | None = Field(default=None, gt=0)
    chunk_tokens: int | None = Field(default=None, gt=0)
    gpus_per_node: int | None = Field(default=None, gt=0)
    disagg: Disagg | None = None
    simulate: bool = True
    """Run the discrete-event simulation for percentiles."""

    @field_validator("request_rate", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
            return math.inf
        return value


class ServeEstimate(Frozen):
    """Predicted figures of one deployment."""

    model: str
    gpu: str
    num_gpus: int
    deployment: Deployment
    workload: ServeWorkload
    engine: str
    ttft_ms: float
    """Mean time to first token (queueing included)."""
    tpot_ms: float
    """Mean time per output token after the first."""
    output_tokens_per_s_total: float
    output_tokens_per_s_per_gpu: float
    output_tokens_per_s_per_user: float
    """1 / TPOT: the speed one user sees."""
    fits: bool
    percentiles: dict[str, dict[str, float]]
    """{'ttft_ms': {'p50': ..}, 'tpot_ms': {..}} from the discrete-event simulation (empty if not run)."""
    batch: float
    """Sequences in flight per instance (steady state)."""
    kv_capacity_tokens: float
    """KV-cache tokens one instance holds."""
    memory_gb: dict[str, float]
    """Per GPU: weights, activations, runtime, kv_cache."""
    breakdown: dict[str, float]
    """Decode iteration time by term, ms (steady-state load)."""
    formulas: dict[str, str]
    provenance: dict[str, str]
    """Which knowledge layer produced each figure."""
    disagg: dict[str, Any] | None = None


def _specs(req: ServeRequest, workload: ServeWorkload | None = None) -> tuple[ModelSpec, ClusterSpec, Deployment,
                                                                               ServeWorkload]:
    model = load_model(req.model)
    gpu = load_gpu(req.gpu)
    per_instance = req.tp * req.pp * req.attn_dp
    replicas = req.replicas
    if replicas is None:
        if req.num_gpus is None:
            replicas = 1
        elif req.num_gpus % per_instance:
            raise PlanError(f"num_gpus={req.num_gpus} is not a multiple of tp*pp*attn_dp={per_instance}; "
                            "change num_gpus or the layout")
        else:
            replicas = req.num_gpus // per_instance
    num_gpus = per_instance * replicas
    if req.num_gpus is not None and req.num_gpus != num_gpus:
        raise PlanError(f"num_gpus={req.num_gpus} != tp*pp*attn_dp*replicas = {num_gpus}; fix one of them")
    defaults = DEFAULTS[req.engine]
    kv = req.kv_dtype or ("fp8" if req.precision in ("fp8", "fp4") else req.precision)
    try:
        dep = Deployment(tp=req.tp, pp=req.pp, ep=req.ep, attn_dp=req.attn_dp, replicas=replicas,
                         precision=req.precision, kv_dtype=kv,  # type: ignore[arg-type]
                         max_batch=req.max_batch or defaults.max_batch,
                         chunk_tokens=req.chunk_tokens or defaults.chunk_tokens)
    except ValidationError as exc:  # a rule across fields (ep against tp*attn_dp)
        raise PlanError(str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from None
    check_deployment(dep, model)
    work = workload or request_workload(req)
    longest = max((r[1] + r[2] for r in work.trace), default=work.isl + work.osl)
    for hist_isl in (work.isl_histogram or ((work.isl, 1.0),)):
        for hist_osl in (work.osl_histogram or ((work.osl, 1.0),)):
            longest = max(longest, hist_isl[0] + hist_osl[0])
    window = context_tokens(model)
    if window is not None and longest > window:
        raise PlanError(f"isl+osl = {longest} tokens exceeds the {window}-token context of {model.name}; "
                        "shorten the prompt or output")
    try:  # links matter inside one instance; replicas are independent
        cluster = make_cluster(gpu, per_instance, gpus_per_node=req.gpus_per_node)
    except ValidationError as exc:
        raise PlanError(f"tp*pp*attn_dp={per_instance} GPUs per instance: {exc.errors()[0]['msg']}") from None
    return model, cluster, dep, work


def request_workload(req: ServeRequest) -> ServeWorkload:
    """The workload of a request: fixed lengths, histograms, or a replayed trace."""
    if req.trace is not None:
        if req.concurrency is not None or req.request_rate is not None:
            raise PlanError("a trace sets the arrivals: drop concurrency/request_rate")
        return trace_workload(load_trace(Path(req.trace)), req.prefix_hit)
    if req.concurrency is None and req.request_rate is None:
        raise PlanError("give concurrency (requests in flight) or request_rate (requests/s, 'inf' = all at once)")
    if req.request_rate is not None and not req.request_rate > 0:
        raise PlanError(f"request_rate={req.request_rate} must be positive (requests/s; 'inf' = all at once)")
    isl_hist = load_histogram(Path(req.isl_histogram), "isl histogram") if req.isl_histogram else ()
    osl_hist = load_histogram(Path(req.osl_histogram), "osl histogram") if req.osl_histogram else ()
    isl = round(histogram_mean(isl_hist)) if isl_hist else req.isl
    osl = round(histogram_mean(osl_hist)) if osl_hist else req.osl
    if isl is None or osl is None:
        raise PlanError("give isl and osl (or a length histogram, or a trace)")
    return ServeWorkload(isl=isl, osl=osl, concurrency=req.concurrency, request_rate=req.request_rate,
                         prefix_hit=req.prefix_hit, length_cv=req.length_cv, num_requests=req.num_requests,
                         warmup_requests=req.warmup_requests,
                         isl_histogram=isl_hist, osl_histogram=osl_hist)


def provenance(eff: ServingEfficiency, cluster: ClusterSpec, engine: str, simulated: bool) -> dict[str, str]:
    gpu = cluster.gpu
    compute, where = eff.compute_for(gpu)
    return {
        "peak_flops / hbm": f"datasheet: {gpu.name} {', '.join(f'{k} {v / 1e12:g}' for k, v in gpu.peak_flops.items())} "
                            f"TFLOP/s, {gpu.hbm_bytes_per_s / 1e12:g} TB/s, {gpu.hbm_bytes / 1e9:g} GB",
        "compute_efficiency": f"{compute:.3f} of peak, {where}",
        "hbm_efficiency": f"{eff.hbm:.3f} of HBM bandwidth, {eff.source}",
        "overheads": f"{eff.overhead_for(engine) * 1e3:.2f} ms/iteration + {eff.sequence_overhead_s * 1e6:.1f} us/sequence "
                     f"({engine}), TTFT +{eff.request_overhead_for(engine) * 1e3:.0f} ms, lockstep share of closed-loop "
                     f"clients {eff.lockstep_for(engine):.2f}; {eff.source}",
        "links": "cluster spec (datasheet defaults), α-β collectives (meshplan.cost.comm)",
        "kv_capacity": f"HBM - weights - activations - {eff.runtime_bytes / 1e9:g} GB runtime, x{eff.memory_fraction} "
                       "(not fitted)",
        "means / percentiles": "means: steady-state model (fitted); percentiles: discrete-event simulation"
                               if simulated else "means: steady-state model (fitted); no simulation run",
    }


def estimate_serving(req: ServeRequest | dict[str, Any], eff: ServingEfficiency | None = None,
                     workload: ServeWorkload | None = None) -> ServeEstimate:
    """Price one deployment (for `workload` when given, else the request's own); bad input raises `PlanError`
    with the field and the fix."""
    if isinstance(req, dict):
        try:
            req = ServeRequest.model_validate(req)
        except ValidationError as exc:
            where, msg, value = first_error(exc)
            raise PlanError(f"{where or 'request'}: {msg} (got {value!r})") from None
    eff = eff or default_serving_efficiency()
    model, cluster, dep, work = _specs(req, workload)
    if req.disagg is not None:
        from meshplan.serve.disagg import estimate_disagg

        return estimate_disagg(req, model, cluster, work, eff)
    table = DeploymentTable.of([dep])
    cap = capacity(model, cluster.gpu, table, eff.memory_fraction, eff.runtime_bytes)
    if not cap.fits[0]:
        missing = -float(cap.kv_budget_bytes[0]) / eff.memory_fraction
        raise PlanError(f"{model.name} does not fit on {cluster.gpu.name} with {dep.label()}: weights "
                        f"{cap.weights_bytes[0] / GB:.1f} GB per GPU, {missing / GB:.1f} GB missing; raise tp/pp, "
                        "lower the precision or use a larger GPU")
    it = iteration_model(model, cluster, table, eff, req.engine)
    seq_tokens = work.isl + work.osl / 2.0
    seq_cap = cap.max_sequences(seq_tokens)
    if seq_cap[0] < 1:
        raise PlanError(f"one sequence of {work.isl}+{work.osl} tokens needs more KV cache than the "
                        f"{cap.kv_tokens[0]:.0f} tokens left on {dep.label()}; raise tp/pp or shorten the lengths")
    fig = steady_state(it, work, seq_cap, table.max_batch, table.chunk_tokens, table.replicas, "continuous",
                       eff.request_overhead_for(req.engine), eff.lockstep_for(req.engine))
    ttft, tpot = float(fig.ttft_s[0]), float(fig.tpot_s[0])
    total = float(fig.output_tokens_per_s[0]) * dep.replicas
    percentiles: dict[str, dict[str, float]] = {}
    if req.simulate:
        sim = simulate(it, work, kv_tokens=float(cap.kv_tokens[0]), max_batch=dep.max_batch,
                       chunk_tokens=dep.chunk_tokens, replicas=dep.replicas,
                       request_overhead_s=eff.request_overhead_for(req.engine),
                       num_requests=min(work.num_requests, 2000), lockstep=eff.lockstep_for(req.engine))
        percentiles = {m: {f"p{p:g}": sim.percentile(m, p) * 1e3 for p in PERCENTILES} for m in ("ttft", "tpot")}
        percentiles = {f"{m}_ms": v for m, v in percentiles.items()}
        if work.request_rate is not None and not work.offline:  # open loop: the simulation is the model of queues
            ttft, tpot = float(sim.ttft_s.mean()), float(sim.tpot_s.mean())
            total = float(sim.output_tokens_per_s) * dep.replicas
    terms = it.terms(fig.batch, seq_tokens, fig.prefill_tokens_per_iteration, work.prefill_tokens / 2.0)
    breakdown = {k: float(v[0]) * 1e3 for k, v in terms.items()}
    memory = {"weights": float(cap.weights_bytes[0]) / GB, "activations": float(cap.activation_bytes[0]) / GB,
              "runtime": float(cap.runtime_bytes[0]) / GB,
              "kv_cache": float(cap.kv_budget_bytes[0]) / GB}
    return ServeEstimate(
        model=model.name, gpu=cluster.gpu.name, num_gpus=dep.num_gpus, deployment=dep, workload=work,
        engine=req.engine, ttft_ms=ttft * 1e3, tpot_ms=tpot * 1e3, output_tokens_per_s_total=total,
        output_tokens_per_s_per_gpu=total / dep.num_gpus, output_tokens_per_s_per_user=1.0 / tpot,
        fits=True, percentiles=percentiles, batch=float(fig.batch[0]), kv_capacity_tokens=float(cap.kv_tokens[0]),
        memory_gb=memory, breakdown=breakdown, formulas=TERM_SOURCES,
        provenance=provenance(eff, cluster, req.engine, req.simulate),
    )
