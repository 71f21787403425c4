"""`meshplan calibrate`: fit the cost model's factors to the stored measurements of one hardware profile.

Step time: least squares on log(predicted / measured) (scipy's trust-region reflective solver, bounded), so a
10% miss weighs the same on a fast and a slow strategy. The parameters are factors of `Efficiency`, as many as
the runs can inform: the GEMM factor (achieved / profiled FLOP/s in training), then the link bandwidth factor,
then the attention-kernel ratio and the ridge factor (how fast small GEMMs fall off). Peak memory: linear least
squares on relative error of measured = a·(weights + gradients + optimizer states) + b·(activations + logits) + c,
the cost model's own terms and its per-device constant. One standard error per parameter from the Jacobian (cov = s²·(JᵀJ)⁻¹).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
from scipy.optimize import least_squares, lsq_linear

from meshplan.calibrate.fit import FitResult, fit_efficiency, published_measurements
from meshplan.cost.efficiency import Efficiency, default_efficiency
from meshplan.cost.training import training_cost
from meshplan.errors import PlanError
from meshplan.measure.hardware import HardwareProfile, local_cluster, profile_efficiency
from meshplan.measure.store import RunRecord
from meshplan.specs import TrainWorkload
from meshplan.strategy import StrategyTable

# (lower, upper) of each fitted factor: physical ranges, not tuning knobs. The GEMM factor may exceed 1: the
# profile measures a process's share while all compute at once, and pipeline bubbles leave some ranks more.
# The link latency (s) is refitted too: in training a collective also waits for its peers to be scheduled, which
# an idle microbenchmark does not see on shared cores.
BOUNDS = {"gemm": (0.05, 3.0), "link_latency_s": (0.0, 0.05), "pp_bubble_hidden": (0.0, 1.0),
          "intra_node_bandwidth": (0.02, 1.0), "dp_overlap": (0.0, 1.0), "attention_ratio": (0.05, 1.0),
          "ridge_factor": (0.0, 4.0)}
# Weak prior: a factor moves freely within ~PRIOR_SPREAD x its profiled value (or a quarter of its range when that
# value is 0) before the pull back costs as much as a 100% step-time error.
PRIOR_SPREAD = 3.0  # dimensionless
# The memory-state scale may move ~5% from the profile's value (bytes/param of the training dtype and optimizer)
# before the pull back costs as much as a 5% memory error.
STATE_SPREAD = 0.05  # dimensionless
# The activation scale may move ~50% (the model's per-layer count is Megatron's, the executor's kernels differ).
ACTIVATION_SPREAD = 0.5  # dimensionless
# Parameters in the order more runs unlock them: (minimum successful runs, name).
STEP_PARAMETERS = ((1, "gemm"), (3, "link_latency_s"), (4, "pp_bubble_hidden"), (6, "intra_node_bandwidth"),
                   (7, "dp_overlap"), (9, "attention_ratio"), (11, "ridge_factor"))


@dataclass(frozen=True)
class Fitted:
    name: str
    value: float
    stderr: float


@dataclass(frozen=True)
class Calibration:
    profile: HardwareProfile
    """The profile with the fitted factors and link latency (write it with `write_profile`)."""
    efficiency: Efficiency
    fitted: list[Fitted]
    step_error_before: np.ndarray
    """Relative error (predicted / measured - 1) per run with the starting factors."""
    step_error_after: np.ndarray
    memory_error_before: np.ndarray
    memory_error_after: np.ndarray
    num_runs: int


def _with_latency(profile: HardwareProfile, values: dict[str, float]) -> HardwareProfile:
    if "link_latency_s" not in values:
        return profile
    links = {k: v.model_copy(update={"latency_s": values["link_latency_s"]}) for k, v in profile.links.items()}
    return profile.model_copy(update={"links": links})


def _with(eff: Efficiency, values: dict[str, float]) -> Efficiency:
    update: dict[str, object] = {k: v for k, v in values.items() if k not in ("gemm", "link_latency_s")}
    if "gemm" in values:
        update["gemm"] = {**eff.gemm, eff.fallback_architecture: values["gemm"]}
    return eff.model_copy(update=update)


def _get(profile: HardwareProfile, eff: Efficiency, name: str) -> float:
    if name == "link_latency_s":
        return profile.links["intra_node"].latency_s
    return eff.gemm[eff.fallback_architecture] if name == "gemm" else float(getattr(eff, name))


def _costs(runs: Sequence[RunRecord], profile: HardwareProfile, eff: Efficiency) -> tuple[np.ndarray, np.ndarray,
                                                                                           np.ndarray, np.ndarray]:
    """(step s, peak bytes, model-state bytes, activation bytes) of each run; runs are grouped by job."""
    step, peak, states, acts = (np.empty(len(runs)) for _ in range(4))
    groups: dict[tuple[str, int, int, int], list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault((r.model.model_dump_json(), r.num_processes, r.global_batch, r.seq_len), []).append(i)
    for idx in groups.values():
        r0 = runs[idx[0]]
        table = StrategyTable.from_strategies([runs[i].strategy for i in idx])
        cost = training_cost(r0.model, local_cluster(profile, r0.num_processes),
                             TrainWorkload(global_batch=r0.global_batch, seq_len=r0.seq_len), table, eff)
        m = cost.memory
        step[idx], peak[idx] = cost.step_time_s, cost.peak_memory_bytes
        states[idx] = m.weights + m.gradients + m.optimizer
        acts[idx] = m.activations + m.logits + m.buffers  # buffers: unsharded weights in the compute dtype
    return step, peak, states, acts


def calibrate(runs: Sequence[RunRecord], profile: HardwareProfile, start: Efficiency | None = None) -> Calibration:
    """Fit the factors the successful runs can inform; the rest keep their starting values."""
    ok = [r for r in runs if r.status == "ok"]
    if not ok:
        raise PlanError("no successful measured runs to calibrate with; run `meshplan validate` first "
                        "(with the same --hardware and --db)")
    start = start or profile_efficiency(profile)
    measured_step = np.array([r.measured_step_time_s for r in ok], dtype=float)
    measured_mem = np.array([r.measured_peak_memory_bytes for r in ok], dtype=float)
    names = [name for need, name in STEP_PARAMETERS if len(ok) >= need]
    lower = np.array([BOUNDS[n][0] for n in names])
    upper = np.array([BOUNDS[n][1] for n in names])
    x0 = np.clip([_get(profile, start, n) for n in names], lower, upper)

    prior = x0.copy()

    def residuals(x: np.ndarray) -> np.ndarray:
        values = dict(zip(names, map(float, x)))
        fit = np.log(_costs(ok, _with_latency(profile, values), _with(start, values))[0] / measured_step)
        # a weak pull towards the profile's values keeps factors the few runs cannot inform where they were
        return np.concatenate([fit, (x - prior) / (PRIOR_SPREAD * np.maximum(np.abs(prior), upper / 4))])

    before_step, before_peak, states, acts = _costs(ok, profile, start)
    sol = least_squares(residuals, x0, bounds=(lower, upper), diff_step=1e-3, x_scale="jac")
    stderr = _stderr(sol.jac, sol.fun, len(names))  # the prior rows count as observations of the factors
    fitted = [Fitted(n, float(v), float(e)) for n, v, e in zip(names, sol.x, stderr)]

    memory_fitted, memory_update = _fit_memory(states, acts, before_peak - states - acts, measured_mem, start)
    # ZeRO-3 under PP peaks at one of two moments, and which one depends on the scales (`cost.training`): refit with
    # the breakdown taken at the fitted scales until the moments settle (they do in one or two rounds)
    for _ in range(3):
        if not memory_update:
            break
        at_fit = start.model_copy(update=memory_update)
        _, peak_fit, states_fit, acts_fit = _costs(ok, profile, at_fit)
        if np.allclose(states_fit / at_fit.memory_state_scale, states / start.memory_state_scale, rtol=1e-12) and \
                np.allclose(acts_fit / at_fit.memory_activation_scale, acts / start.memory_activation_scale, rtol=1e-12):
            break
        states = states_fit * start.memory_state_scale / at_fit.memory_state_scale
        acts = acts_fit * start.memory_activation_scale / at_fit.memory_activation_scale
        memory_fitted, memory_update = _fit_memory(states, acts, before_peak - states - acts, measured_mem, start)
    fitted += memory_fitted
    when = datetime.now(UTC).isoformat(timespec="seconds")
    values = {f.name: f.value for f in fitted if f.name in names}
    eff = _with(start, values)
    eff = eff.model_copy(update={**memory_update, "source": f"calibrated to {len(ok)} local runs, {when}"})
    fitted_profile = _with_latency(profile, values)
    after_step, after_peak, _, _ = _costs(ok, fitted_profile, eff)
    result = Calibration(fitted_profile, eff, fitted, before_step / measured_step - 1.0,
                         after_step / measured_step - 1.0, before_peak / measured_mem - 1.0,
                         after_peak / measured_mem - 1.0, len(ok))
    return replace(result, profile=calibrated_profile(fitted_profile, result))


def _fit_memory(states: np.ndarray, acts: np.ndarray, constant: np.ndarray, measured: np.ndarray,
                start: Efficiency) -> tuple[list[Fitted], dict[str, float]]:
    """measured ≈ a·states + b·acts + c of the unscaled model (the starting scales divided back out), least squares
    on relative error, a, b, c >= 0. a and b are held near their starting values (STATE_SPREAD, ACTIVATION_SPREAD):
    the bytes per parameter of weights, gradients and optimizer states follow from the training dtype and the
    optimizer, the bytes per activation from the dtype, and free, they trade themselves against c. c (bytes per device) is the step's working set that the model's terms do not hold:
    optimizer-step temporaries, the loss's copies of the logits, pipeline and FSDP buffers. It needs runs that tell
    the three apart; with fewer, c keeps its starting value (`constant`) and only a and b are fitted."""
    unit = float(np.median(measured))  # bytes: the constant's column is of order 1, as the others
    base = [states / start.memory_state_scale, acts / start.memory_activation_scale, np.full_like(measured, unit)]
    names = ["memory_state_scale", "memory_activation_scale", "memory_overhead_bytes"]
    a0, b0 = start.memory_state_scale, start.memory_activation_scale
    for k in (3, 2):
        target = measured if k == 3 else measured - constant
        design = np.stack(base[:k], axis=1) / measured[:, None]
        if len(measured) < k or np.linalg.matrix_rank(design) < k or np.any(target <= 0):
            continue
        # prior rows (x - x0) / (spread·x0) for a and b
        prior = np.zeros((2, k))
        prior[0, 0], prior[1, 1] = 1.0 / (STATE_SPREAD * a0), 1.0 / (ACTIVATION_SPREAD * b0)
        rows = np.vstack([design, prior])
        rhs = np.r_[target / measured, 1.0 / STATE_SPREAD, 1.0 / ACTIVATION_SPREAD]
        sol = lsq_linear(rows, rhs, bounds=(np.array([1e-3, 1e-3, 0.0][:k]), np.inf), method="bvls")
        err = _stderr(rows, rows @ sol.x - rhs, k)
        scale = np.array([1.0, 1.0, unit][:k])
        return ([Fitted(n, float(v), float(e)) for n, v, e in zip(names, sol.x * scale, err * scale)],
                {n: float(v) for n, v in zip(names, sol.x * scale)})
    return [], {}


def _stderr(jac: np.ndarray, resid: np.ndarray, num_params: int) -> np.ndarray:
    dof = max(len(resid) - num_params, 1)
    s2 = float(resid @ resid) / dof
    cov = np.linalg.pinv(jac.T @ jac) * s2
    return np.sqrt(np.clip(np.diag(cov), 0.0, None))


def calibrated_profile(profile: HardwareProfile, result: Calibration) -> HardwareProfile:
    """The profile with the fitted factors (the planner uses them whenever this profile is given)."""
    return profile.model_copy(update={"efficiency": result.efficiency, "calibration": {
        "runs": result.num_runs,
        "fitted": {f.name: {"value": f.value, "stderr": f.stderr} for f in result.fitted},
        "median_abs_step_error_before": float(np.median(np.abs(result.step_error_before))),
        "median_abs_step_error_after": float(np.median(np.abs(result.step_error_after))),
        "max_abs_memory_error_before": float(np.max(np.abs(result.memory_error_before))),
        "max_abs_memory_error_after": float(np.max(np.abs(result.memory_error_after))),
    }})


def calibrate_published() -> FitResult:
    """Fit the datasheet layer's factors (GEMM efficiency per GPU architecture, attention, fp8, TP overlap) to the
    published training runs shipped with meshplan, from the shipped factors. They share no factor with a local
    profile's fit: those describe other hardware (the local device) and are fitted to its own runs."""
    runs = published_measurements()
    return fit_efficiency(runs, default_efficiency(), source=f"fitted to {len(runs)} published training runs "
                                                             "(meshplan calibrate --published)")


def with_published(profile: HardwareProfile, fit: FitResult) -> HardwareProfile:
    """The profile with the published fit recorded next to its own calibration (for the record; planning with
    this profile uses the local factors)."""
    record = {"runs": len(fit.error_after),
              "fitted": {n: {"value": float(v), "stderr": float(e)} for n, v, e in zip(fit.names, fit.values, fit.stderr)},
              "median_abs_error_before": float(np.median(np.abs(fit.error_before))),
              "median_abs_error_after": float(np.median(np.abs(fit.error_after)))}
    return profile.model_copy(update={"calibration": {**(profile.calibration or {}), "published": record}})
