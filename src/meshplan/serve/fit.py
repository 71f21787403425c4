"""Predict the published serving runs and fit `ServingEfficiency` to them.

Least squares on log(predicted / measured) of TTFT, TPOT and throughput (soft-L1, as the training fit), so a
10% miss weighs the same on every metric and row; the predictions are those of `meshplan serve --estimate`
(steady state, and the scheduler simulation for finite request rates). Parameters: compute fraction per GPU
architecture, the HBM fraction, the fp8/fp4 fraction relative to bf16, one time per sequence per iteration, and
per engine the fixed iteration time, the fixed part of TTFT and the lockstep share of its benchmark clients: few,
physically meaningful, shared by all rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from meshplan.calibrate.published_serving import PublishedServingRun
from meshplan.serve.capacity import capacity
from meshplan.serve.cost import iteration_model
from meshplan.serve.deployment import Deployment, DeploymentTable
from meshplan.serve.efficiency import ServingEfficiency
from meshplan.serve.engines import DEFAULTS, ENGINE_BUILD
from meshplan.serve.steady import Scheduler, steady_state
from meshplan.serve.workload import ServeWorkload
from meshplan.specs.cluster import make_cluster

METRICS = ("ttft", "tpot", "throughput")


@dataclass(frozen=True)
class RunPrediction:
    id: str
    engine: str
    predicted: dict[str, float]
    measured: dict[str, float | None]
    fits: bool


# Sources whose runs schedule what their TensorRT engine was built for: trtllm-bench's throughput tables, and
# TensorRT-LLM 0.14's online table, served through Triton before trtllm-serve (batch limit 256) existed.
ENGINE_BUILD_GROUPS = ("trtllm-0.17", "trtllm-pytorch", "trtllm-0.14-online")

# Measured requests per closed-loop client where no source states the run's request count (assumed; after the
# warm-up it changes no steady-state mean, only the length of a simulated run).
REQUESTS_PER_CLIENT = 10

# Requests per run where the source states it: TensorRT-LLM 0.14's online table, "with 500 requests".
STATED_REQUESTS = {"trtllm-0.14-online": 500}


def run_inputs(run: PublishedServingRun) -> tuple[Deployment, ServeWorkload, Scheduler]:
    """The deployment and workload of a published run, with the engine's scheduler defaults; a closed-loop run
    whose request count no source states sends REQUESTS_PER_CLIENT requests per client after a warm-up of one
    request per client (genai-perf's and aiperf's `--warmup-request-count` practice), so its synchronised first
    wave is not measured. The assumption is the data's choice too: with the first wave measured (no warm-up,
    10 requests per client) the refit leaves the mean TTFT error 2.6 points worse overall (TensorRT-LLM 4.4 and
    vLLM 3.8 points worse, SGLang 4.7 better)."""
    defaults = ENGINE_BUILD if run.source_group in ENGINE_BUILD_GROUPS else DEFAULTS.get(run.engine, DEFAULTS["unknown"])
    dep = Deployment(tp=run.tp, pp=run.pp, ep=run.ep, attn_dp=run.attn_dp, replicas=run.replicas,
                     precision=run.precision,  # type: ignore[arg-type]
                     kv_dtype=run.kv_dtype,  # type: ignore[arg-type]
                     max_batch=defaults.max_batch, chunk_tokens=defaults.chunk_tokens)
    stated = STATED_REQUESTS.get(run.source_group)
    requests = stated or (REQUESTS_PER_CLIENT * run.concurrency if run.concurrency is not None else 2000)
    warmup = run.concurrency if run.concurrency is not None and stated is None else 0
    work = ServeWorkload(isl=run.isl, osl=run.osl, concurrency=run.concurrency,
                         request_rate=None if run.concurrency is not None else run.request_rate,
                         num_requests=requests, warmup_requests=warmup)
    scheduler: Scheduler = "static" if run.source_group == "splitwise" else "continuous"
    return dep, work, scheduler


def predict_run(run: PublishedServingRun, eff: ServingEfficiency, simulate_rates: bool = False) -> RunPrediction:
    """Predicted TTFT (ms), TPOT (ms) and output tokens/s of a run; with `simulate_rates`, finite-rate
    (open-loop) rows come from the scheduler simulation, as `meshplan serve --estimate` prices them."""
    dep, work, scheduler = run_inputs(run)
    table = DeploymentTable.of([dep])
    cluster = make_cluster(run.gpu, max(run.num_gpus, 1), gpus_per_node=max(run.gpu.default_gpus_per_node, 1)
                           if run.num_gpus > run.gpu.default_gpus_per_node else None)
    cap = capacity(run.model, run.gpu, table, eff.memory_fraction, eff.runtime_bytes)
    it = iteration_model(run.model, cluster, table, eff, run.engine)
    fig = steady_state(it, work, cap.max_sequences(work.isl + work.osl / 2.0), table.max_batch, table.chunk_tokens,
                       table.replicas, scheduler, eff.request_overhead_for(run.engine), eff.lockstep_for(run.engine))
    predicted = {"ttft": float(fig.ttft_s[0]) * 1e3, "tpot": float(fig.tpot_s[0]) * 1e3,
                 "throughput": float(fig.output_tokens_per_s[0] * dep.replicas)}
    if simulate_rates and run.request_rate is not None and not run.offline:
        from meshplan.serve.simulate import simulate

        sim = simulate(it, work, kv_tokens=float(cap.kv_tokens[0]), max_batch=dep.max_batch,
                       chunk_tokens=dep.chunk_tokens, replicas=dep.replicas,
                       request_overhead_s=eff.request_overhead_for(run.engine), num_requests=min(work.num_requests, 600),
                       lockstep=eff.lockstep_for(run.engine))
        predicted = {"ttft": float(sim.ttft_s.mean()) * 1e3, "tpot": float(sim.tpot_s.mean()) * 1e3,
                     "throughput": float(sim.output_tokens_per_s) * dep.replicas}
    ttft = run.measured_ttft_ms
    if run.offline:  # TTFT of an all-at-once run depends on the request count, which no source states
        ttft = None
    measured = {"ttft": ttft, "tpot": run.measured_tpot_ms, "throughput": run.measured_output_tokens_per_s_total}
    return RunPrediction(run.id, run.engine, predicted, measured, bool(cap.fits[0]))


def log_errors(runs: Sequence[PublishedServingRun], eff: ServingEfficiency, simulate_rates: bool = True) -> np.ndarray:
    """log(predicted / measured) of every measured figure, predicted as `meshplan serve --estimate` does."""
    out: list[float] = []
    for run in runs:
        pred = predict_run(run, eff, simulate_rates)
        for m in METRICS:
            value = pred.measured[m]
            if value:
                out.append(math.log(max(pred.predicted[m], 1e-9) / value))
    return np.array(out)


# Parameters of the fit and their physical ranges (lower, upper).
_ARCHS = ("ampere", "hopper", "blackwell")
_ENGINES = ("trtllm", "vllm", "sglang", "unknown")


def _names(runs: Sequence[PublishedServingRun]) -> list[str]:
    """The parameters the runs can inform: architectures and engines without runs keep their start values."""
    archs = [a for a in _ARCHS if any(r.gpu.architecture == a for r in runs)]
    engines = [e for e in _ENGINES if any(r.engine == e for r in runs)]
    return ([f"compute.{a}" for a in archs] + ["hbm"] + [f"iteration_overhead_s.{e}" for e in engines]
            + [f"request_overhead_s.{e}" for e in engines] + [f"lockstep_share.{e}" for e in engines]
            + ["low_precision_ratio", "sequence_overhead_s"])


def _bounds(name: str) -> tuple[float, float]:
    if name.startswith("compute."):
        return 0.2, 0.95
    if name == "hbm":
        return 0.4, 0.95
    if name.startswith("iteration_overhead_s."):
        return 0.0, 0.05  # s
    if name.startswith("request_overhead_s."):
        return 0.0, 0.5  # s
    if name == "sequence_overhead_s":
        return 0.0, 1e-4  # s
    if name.startswith("allreduce_step_latency_s."):
        return 0.0, 2e-4  # s per NCCL tree step
    if name == "low_precision_ratio":
        return 0.3, 1.0
    return 0.0, 1.0  # lockstep_share: a probability


_SCALE = {"iteration_overhead_s": 1e-3, "request_overhead_s": 1e-2, "sequence_overhead_s": 1e-5,
          "allreduce_step_latency_s": 1e-5}


def _scale(name: str) -> float:
    return _SCALE.get(name.split(".")[0], 1.0)


def with_params(base: ServingEfficiency, names: list[str], values: np.ndarray, source: str) -> ServingEfficiency:
    data = base.model_dump()
    for name, value in zip(names, values, strict=True):
        key, _, sub = name.partition(".")
        if sub:
            data[key] = {**data[key], sub: float(value)}
        else:
            data[key] = float(value)
    data["source"] = source
    return ServingEfficiency.model_validate(data)


@dataclass(frozen=True)
class ServingFit:
    efficiency: ServingEfficiency
    names: list[str]
    values: np.ndarray
    stderr: np.ndarray
    num_points: int


ROBUST_SCALE = 0.15  # log-error where the soft-L1 loss turns linear (as the training fit)


def fit_serving(runs: Sequence[PublishedServingRun], base: ServingEfficiency,
                names: Sequence[str] | None = None) -> ServingFit:
    """Least-squares fit of the serving factors (`names`, default every factor the runs inform) to every measured
    figure of `runs` (soft-L1 on log errors); the other factors keep `base`'s values."""
    from scipy.optimize import least_squares  # type: ignore[import-untyped]

    names = list(names) if names is not None else _names(runs)
    scale = np.array([_scale(n) for n in names])
    start = []
    for name in names:
        key, _, sub = name.partition(".")
        value = getattr(base, key)
        start.append(value[sub] if sub else value)
    lower = np.array([_bounds(n)[0] for n in names]) / scale
    upper = np.array([_bounds(n)[1] for n in names]) / scale
    x0 = np.clip(np.array(start) / scale, lower + 1e-9, upper - 1e-9)
    source = f"fitted to {len(runs)} published serving runs (benchmarks/fit_serving.py)"

    def residuals(x: np.ndarray) -> np.ndarray:
        return log_errors(runs, with_params(base, names, x * scale, source))

    result = least_squares(residuals, x0, bounds=(lower, upper), loss="soft_l1", f_scale=ROBUST_SCALE,
                           diff_step=1e-3)
    jac = result.jac
    dof = max(len(result.fun) - len(names), 1)
    s2 = float(np.sum(result.fun**2)) / dof
    try:
        cov = np.linalg.pinv(jac.T @ jac) * s2
        stderr = np.sqrt(np.maximum(np.diag(cov), 0.0)) * scale
    except np.linalg.LinAlgError:
        stderr = np.full(len(names), np.nan)
    values = result.x * scale
    return ServingFit(with_params(base, names, values, source), names, values, stderr, len(result.fun))
