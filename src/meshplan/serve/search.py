"""Search serving deployments: enumerate layouts, price them all at once (steady state, vectorised), check
latency targets, simulate the best ones for percentiles, and rank by the objective.

Candidates per GPU type: tp (divides the heads, within a node), pp, for MoE models attention DP and ep (ep
divides the GPUs of a stage and the experts), weight precision (kv dtype follows: fp8 for fp8/fp4 weights),
batch limit, chunked-prefill size; replicas fill the GPUs (or, for the fewest-GPUs objective, as few as meet
the rate). Screening uses the steady-state means; the discrete-event simulation then checks the percentile
targets of the best `simulate_top` candidates.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from meshplan.errors import PlanError
from meshplan.serve.capacity import capacity
from meshplan.serve.context import context_tokens
from meshplan.serve.cost import iteration_model
from meshplan.serve.deployment import Deployment, DeploymentTable
from meshplan.serve.efficiency import ServingEfficiency, default_serving_efficiency
from meshplan.serve.engines import DEFAULTS
from meshplan.serve.simulate import simulate
from meshplan.serve.steady import steady_state
from meshplan.serve.workload import LatencyTarget, ServeWorkload
from meshplan.specs import GpuSpec, ModelSpec, make_cluster

Objective = Literal["throughput", "gpus", "cost"]
BATCH_LIMITS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
CHUNKS = (2048, 8192)
GB = 1e9  # bytes per displayed GB


@dataclass(frozen=True)
class ServeSearchRequest:
    model: ModelSpec
    gpus: tuple[GpuSpec, ...]
    num_gpus: int
    """GPUs available (per GPU type); the fewest-GPUs objective uses at most this many."""
    workload: ServeWorkload
    engine: str = "vllm"
    precisions: tuple[str, ...] = ("bf16", "fp8")
    ttft: LatencyTarget | None = None
    tpot: LatencyTarget | None = None
    objective: Objective = "throughput"
    gpu_hour_price: dict[str, float] = field(default_factory=dict)
    """$ per GPU-hour by GPU name (cost objective)."""
    max_pp: int = 4
    disagg: bool = False
    """Also consider prefill/decode disaggregation (x prefill and y decode workers, each with its own tp)."""
    simulate_top: int = 6
    top_k: int = 8


@dataclass(frozen=True)
class Candidate:
    gpu: str
    deployment: Deployment
    ttft_s: float
    tpot_s: float
    output_tokens_per_s: float
    """Whole deployment."""
    num_gpus: int
    weights_gb: float
    kv_tokens: float
    batch: float
    ttft_pct_s: float | None = None
    """TTFT at the target percentile (simulated), when simulated."""
    tpot_pct_s: float | None = None
    cost_per_m_tokens: float | None = None
    prefill: Deployment | None = None
    """Disaggregated: the prefill workers (`deployment` then holds the decode workers)."""

    @property
    def label(self) -> str:
        if self.prefill is None:
            return self.deployment.label()
        p, d = self.prefill, self.deployment
        return f"P {p.replicas}x tp{p.tp} + D {d.replicas}x tp{d.tp} {d.precision}"

    @property
    def per_gpu(self) -> float:
        return self.output_tokens_per_s / self.num_gpus

    @property
    def per_user(self) -> float:
        return 1.0 / self.tpot_s


@dataclass(frozen=True)
class ServeSearchResult:
    ranked: list[Candidate]
    pareto: list[Candidate]
    """The frontier of the plans within the mean targets (all plans when none is), one row per layout."""
    num_candidates: int
    num_fit: int
    num_meet: int
    """Within the targets' limits by their steady-state means."""
    num_simulated: int
    """Checked at the targets' percentiles by the scheduler simulation."""
    seconds: float
    priced: list[Candidate] = field(default_factory=list)
    """Every plan that fits and keeps up (for plots)."""
    frontier: list[Candidate] = field(default_factory=list)
    """The full frontier (batch and chunk variants kept)."""


def _divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def enumerate_deployments(model: ModelSpec, gpu: GpuSpec, num_gpus: int, precisions: tuple[str, ...],
                          engine: str, max_pp: int, fill: bool = True) -> list[Deployment]:
    """Valid layouts on `num_gpus` GPUs of one type (replicas fill the GPUs when `fill`)."""
    node = min(gpu.default_gpus_per_node, num_gpus)
    out: list[Deployment] = []
    tps = [t for t in _divisors(model.num_heads, node) if t & (t - 1) == 0]
    adps = [1] if not model.is_moe else [a for a in (1, 2, 4, 8) if a <= node]
    for precision in precisions:
        kv = "fp8" if precision in ("fp8", "fp4") else precision
        for tp in tps:
            for adp in adps:
                if tp * adp > node:
                    continue
                stage = tp * adp
                eps = [1] if not model.is_moe else [e for e in _divisors(stage, stage)
                                                    if model.num_experts % e == 0]
                for ep in eps:
                    for pp in (1, 2, 4, 8):
                        if pp > max_pp or pp > model.num_layers:
                            continue
                        per = stage * pp
                        if per > num_gpus or (fill and num_gpus % per):
                            continue
                        replicas = num_gpus // per
                        for batch in BATCH_LIMITS:
                            for chunk in CHUNKS:
                                out.append(Deployment(tp=tp, pp=pp, ep=ep, attn_dp=adp, replicas=replicas,
                                                      precision=precision, kv_dtype=kv,  # type: ignore[arg-type]
                                                      max_batch=batch, chunk_tokens=chunk))
    return out


def _price(req: ServeSearchRequest, gpu: GpuSpec, eff: ServingEfficiency, deps: list[Deployment]) -> list[Candidate]:
    if not deps:
        return []
    table = DeploymentTable.of(deps)
    w = req.workload
    cluster = make_cluster(gpu, max(int(table.gpus_per_instance.max()), 1))
    cap = capacity(req.model, gpu, table, eff.memory_fraction, eff.runtime_bytes)
    it = iteration_model(req.model, cluster, table, eff, req.engine)
    seq_cap = cap.max_sequences(w.isl + w.osl / 2.0)
    fig = steady_state(it, w, seq_cap, table.max_batch, table.chunk_tokens, table.replicas, "continuous",
                       eff.request_overhead_for(req.engine), eff.lockstep_for(req.engine))
    ok = cap.fits & (seq_cap >= 1) & ~fig.overloaded
    total = fig.output_tokens_per_s * table.replicas
    out = []
    for i in np.flatnonzero(ok):
        d = deps[i]
        price = req.gpu_hour_price.get(gpu.name)
        per_m = d.num_gpus * price / (total[i] * 3600.0) * 1e6 if price else None  # $ per million output tokens
        out.append(Candidate(gpu.name, d, float(fig.ttft_s[i]), float(fig.tpot_s[i]), float(total[i]), d.num_gpus,
                             float(cap.weights_bytes[i]) / GB, float(cap.kv_tokens[i]), float(fig.batch[i]),
                             cost_per_m_tokens=per_m))
    return out


def _layout(c: Candidate) -> tuple[object, ...]:
    d = c.deployment
    return (c.gpu, d.tp, d.pp, d.ep, d.attn_dp, d.replicas, d.precision, d.kv_dtype, c.prefill)


def _distinct(cands: list[Candidate]) -> list[Candidate]:
    """The first (best-ranked) candidate of each layout: batch limit and chunk size variants folded."""
    seen: set[tuple[object, ...]] = set()
    out = []
    for c in cands:
        if _layout(c) not in seen:
            seen.add(_layout(c))
            out.append(c)
    return out


def _disaggregated(req: ServeSearchRequest, gpu: GpuSpec, eff: ServingEfficiency,
                   precisions: tuple[str, ...]) -> list[Candidate]:
    """Disaggregated layouts of all num_gpus GPUs: x prefill workers of tp_p and y decode workers of tp_d,
    priced by `disagg.estimate_disagg` (steady-state means; not simulated)."""
    from meshplan.serve.disagg import estimate_disagg
    from meshplan.serve.estimate import Disagg, DisaggWorkers, ServeRequest

    node = min(gpu.default_gpus_per_node, req.num_gpus)
    tps = [t for t in _divisors(req.model.num_heads, node) if t & (t - 1) == 0]
    cluster = make_cluster(gpu, node)
    out: list[Candidate] = []
    for precision in precisions:
        for tp_p in tps:
            for tp_d in tps:
                for x in range(1, req.num_gpus // tp_p):
                    rest = req.num_gpus - x * tp_p
                    if rest <= 0 or rest % tp_d:
                        continue
                    sides = Disagg(prefill=DisaggWorkers(workers=x, tp=tp_p),
                                   decode=DisaggWorkers(workers=rest // tp_d, tp=tp_d))
                    sreq = ServeRequest(model=req.model.name, gpu=gpu.name, precision=precision,  # type: ignore[arg-type]
                                        engine=req.engine, disagg=sides)  # type: ignore[arg-type]
                    try:
                        e = estimate_disagg(sreq, req.model, cluster, req.workload, eff)
                    except PlanError:  # a side does not fit
                        continue
                    if req.workload.request_rate is not None and e.disagg and not math.isinf(req.workload.request_rate) \
                            and min(e.disagg["prefill_requests_per_s"], e.disagg["decode_requests_per_s"]) < req.workload.request_rate:
                        continue  # does not keep up with the offered rate
                    price = req.gpu_hour_price.get(gpu.name)
                    total = e.output_tokens_per_s_total
                    out.append(Candidate(
                        gpu.name, e.deployment, e.ttft_ms / 1e3, e.tpot_ms / 1e3, total, e.num_gpus,
                        e.memory_gb["weights"], e.kv_capacity_tokens, e.batch,
                        ttft_pct_s=e.ttft_ms / 1e3 if req.ttft else None, tpot_pct_s=e.tpot_ms / 1e3 if req.tpot else None,
                        cost_per_m_tokens=e.num_gpus * price / (total * 3600.0) * 1e6 if price else None,
                        prefill=Deployment.model_validate(e.disagg["prefill"]) if e.disagg else None))
    return out


def _meets_mean(c: Candidate, req: ServeSearchRequest) -> bool:
    return ((req.ttft is None or c.ttft_s <= req.ttft.limit_s) and (req.tpot is None or c.tpot_s <= req.tpot.limit_s))


def _key(c: Candidate, objective: Objective) -> tuple[float, ...]:
    if objective == "gpus":
        return (c.num_gpus, -c.per_gpu)
    if objective == "cost":
        return (c.cost_per_m_tokens if c.cost_per_m_tokens is not None else math.inf, -c.per_gpu)
    return (-round(c.per_gpu, 6), c.tpot_s, c.ttft_s)


def pareto_front(cands: list[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both tok/s per GPU and tok/s per user."""
    order = sorted(cands, key=lambda c: (-c.per_user, -c.per_gpu))
    front: list[Candidate] = []
    best = -math.inf
    for c in order:
        if c.per_gpu > best:
            front.append(c)
            best = c.per_gpu
    return front


def _simulated(c: Candidate, req: ServeSearchRequest, eff: ServingEfficiency, gpu: GpuSpec) -> Candidate:
    table = DeploymentTable.of([c.deployment])
    cluster = make_cluster(gpu, c.deployment.gpus_per_instance)
    it = iteration_model(req.model, cluster, table, eff, req.engine)
    sim = simulate(it, req.workload, kv_tokens=c.kv_tokens, max_batch=c.deployment.max_batch,
                   chunk_tokens=c.deployment.chunk_tokens, replicas=c.deployment.replicas,
                   request_overhead_s=eff.request_overhead_for(req.engine), num_requests=300,
                   lockstep=eff.lockstep_for(req.engine))
    ttft = sim.percentile("ttft", req.ttft.percentile) if req.ttft else None
    tpot = sim.percentile("tpot", req.tpot.percentile) if req.tpot else None
    return Candidate(**{**c.__dict__, "ttft_pct_s": ttft, "tpot_pct_s": tpot})


def _meets_pct(c: Candidate, req: ServeSearchRequest) -> bool:
    return ((req.ttft is None or (c.ttft_pct_s or math.inf) <= req.ttft.limit_s)
            and (req.tpot is None or (c.tpot_pct_s or math.inf) <= req.tpot.limit_s))


def search_serving(req: ServeSearchRequest, eff: ServingEfficiency | None = None) -> ServeSearchResult:
    """The best deployments for the request, best first; `PlanError` when nothing fits or meets the targets."""
    start = time.perf_counter()
    eff = eff or default_serving_efficiency()
    w = req.workload
    window = context_tokens(req.model)
    if window is not None and w.isl + w.osl > window:
        raise PlanError(f"isl+osl = {w.isl + w.osl} tokens exceeds the {window}-token context of {req.model.name}; "
                        "shorten the prompt or output")
    if req.engine not in DEFAULTS:
        raise PlanError(f"engine {req.engine!r} is not one of trtllm, vllm, sglang")
    if req.objective == "cost" and not req.gpu_hour_price:
        raise PlanError("the cost objective needs --gpu-hour-price (e.g. H100=2.5,H200=3.5)")
    unpriced = [g.name for g in req.gpus if g.name not in req.gpu_hour_price]
    if req.objective == "cost" and unpriced:
        raise PlanError(f"the cost objective needs a --gpu-hour-price for every --gpu; {', '.join(unpriced)} has "
                        "none (e.g. H100=2.5,H200=3.5)")
    if req.objective == "gpus" and (w.request_rate is None or math.isinf(w.request_rate)):
        raise PlanError("the fewest-GPUs objective needs a finite --request-rate to serve")
    priced: list[Candidate] = []
    total = 0
    by_gpu = {g.name: g for g in req.gpus}
    for gpu in req.gpus:
        # fp8/fp4 weights on a GPU without those tensor cores are weight-only quantisation: stored narrow,
        # computed in bf16 (`cost.compute_dtype`), as the engines' Marlin-style kernels do.
        precisions = req.precisions
        sizes = [req.num_gpus] if req.objective != "gpus" else list(range(1, req.num_gpus + 1))
        for n in sizes:
            deps = enumerate_deployments(req.model, gpu, n, precisions, req.engine, req.max_pp, fill=True)
            total += len(deps)
            priced += _price(req, gpu, eff, deps)
        if req.disagg and req.objective != "gpus":
            split = _disaggregated(req, gpu, eff, precisions)
            total += len(split)
            priced += split
    if not priced:
        _no_fit(req, eff)
    within = [c for c in priced if _meets_mean(c, req)]
    frontier = pareto_front(within or priced)
    pareto = _distinct(frontier)
    meeting = _distinct(sorted(within, key=lambda c: _key(c, req.objective)))
    if req.ttft is None and req.tpot is None:
        ranked = meeting[: req.top_k]
        return ServeSearchResult(ranked, pareto, total, len(priced), len(meeting), 0, time.perf_counter() - start,
                                 priced, frontier)
    checked: list[Candidate] = []
    pool = meeting if meeting else sorted(priced, key=lambda c: _miss(c, req))[: req.simulate_top]
    simulated = 0
    for c in pool[: req.simulate_top * 3]:
        # disaggregated plans carry their means in the percentile fields (no simulation of two pools)
        sim = c if c.prefill is not None else _simulated(c, req, eff, by_gpu[c.gpu])
        simulated += 1
        if _meets_pct(sim, req):
            checked.append(sim)
        if len(checked) >= req.top_k:
            break
    if not checked:
        _unmeetable(req, priced, eff, by_gpu)
    checked.sort(key=lambda c: _key(c, req.objective))
    return ServeSearchResult(checked, pareto, total, len(priced), len(meeting), simulated, time.perf_counter() - start,
                             priced, frontier)


def _miss(c: Candidate, req: ServeSearchRequest) -> float:
    ttft = c.ttft_s / req.ttft.limit_s if req.ttft else 0.0
    tpot = c.tpot_s / req.tpot.limit_s if req.tpot else 0.0
    return max(ttft, tpot)


def _unmeetable(req: ServeSearchRequest, priced: list[Candidate], eff: ServingEfficiency,
                by_gpu: dict[str, GpuSpec]) -> None:
    parts = []
    for target, name, attr in ((req.ttft, "TTFT", "ttft_s"), (req.tpot, "TPOT", "tpot_s")):
        if target is None:
            continue
        best = min((c for c in priced if c.prefill is None), key=lambda c: getattr(c, attr))
        sim = _simulated(best, req, eff, by_gpu[best.gpu])
        value = (sim.ttft_pct_s if attr == "ttft_s" else sim.tpot_pct_s) or getattr(best, attr)
        if value > target.limit_s:
            parts.append(f"{name} {target.label()}: the best plan ({best.gpu} {best.label}) reaches "
                         f"{value * 1e3:,.0f} ms at p{target.percentile:g}, {value / target.limit_s - 1:.0%} over")
    detail = "; ".join(parts) or "no single plan meets both targets at once"
    raise PlanError(f"no deployment meets the targets: {detail}; relax the targets, lower the load or add GPUs")


def _no_fit(req: ServeSearchRequest, eff: ServingEfficiency) -> None:
    gpu = max(req.gpus, key=lambda g: g.hbm_bytes)
    tp = min(gpu.default_gpus_per_node, req.num_gpus)
    pp = max(1, min(req.max_pp, req.num_gpus // tp))
    lowest = min(req.precisions, key=lambda p: {"fp4": 0, "fp8": 1}.get(p, 2))
    kv = "fp8" if lowest in ("fp8", "fp4") else lowest
    dep = Deployment(tp=tp, pp=pp, precision=lowest, kv_dtype=kv)  # type: ignore[arg-type]
    table = DeploymentTable.of([dep])
    cap = capacity(req.model, gpu, table, eff.memory_fraction, eff.runtime_bytes)
    need = req.workload.isl + req.workload.osl
    missing = max(-float(cap.kv_budget_bytes[0]) / eff.memory_fraction, 0.0)
    if missing > 0:
        raise PlanError(f"{req.model.name} does not fit on {req.num_gpus} x {gpu.name} even at tp{tp} pp{pp} "
                        f"{lowest}: {missing / GB:.1f} GB per GPU missing; add GPUs or allow a lower --precision")
    raise PlanError(f"no deployment of {req.model.name} on {req.num_gpus} x {gpu.name} holds one {need}-token "
                    "sequence in its KV cache, or every one is overloaded by the offered rate; add GPUs or lower "
                    "the rate")
