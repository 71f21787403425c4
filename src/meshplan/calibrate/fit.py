"""Fit the cost model's efficiency factors to measured training runs.

Least squares on log(predicted / measured) tokens/s per GPU (scipy's trust-region reflective solver), so
that a 10% miss weighs the same on a 1-GPU and on a 3,072-GPU run. The parameters are the few factors of
`Efficiency`: GEMM efficiency per GPU architecture that has runs, the fp8 ratio when fp8 runs exist, the
ridge factor, and the bandwidth efficiency of each link tier. One standard error per parameter comes from
the Jacobian at the optimum (cov = s²·(JᵀJ)⁻¹).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from meshplan.cost.efficiency import Efficiency
from meshplan.cost.training import training_cost
from meshplan.errors import PlanError
from meshplan.specs import ClusterSpec, ModelSpec, TrainWorkload
from meshplan.strategy import Strategy, StrategyTable


@dataclass(frozen=True)
class Measurement:
    """One measured run: what ran, and its throughput."""

    id: str
    model: ModelSpec
    cluster: ClusterSpec
    workload: TrainWorkload
    strategy: Strategy
    tokens_per_s_per_gpu: float


@dataclass(frozen=True)
class FitResult:
    efficiency: Efficiency
    names: list[str]
    values: np.ndarray
    stderr: np.ndarray
    error_before: np.ndarray
    """Relative error (predicted / measured - 1) per run with the starting factors."""
    error_after: np.ndarray
    """The same with the fitted factors."""


# (lower, upper) bounds: physical ranges, not tuning knobs.
_BOUNDS = {"gemm": (0.2, 0.95), "fp8_ratio": (0.3, 1.0), "ridge_factor": (0.0, 4.0), "attention_ratio": (0.2, 1.0),
           "tp_overlap": (0.0, 1.0),
           "intra_node_bandwidth": (0.2, 1.0), "inter_node_bandwidth": (0.2, 1.0)}
# The solver works on values of order 1: a parameter is divided by its unit here (all are 1 today).
_UNIT: dict[str, float] = {}
# Robust loss on log errors: runs that software the model cannot see made much slower (a 2021 ZeRO-3
# implementation, a production run with data-loader stalls) count linearly beyond ~15%, not quadratically.
ROBUST_SCALE = 0.15  # log-error where the soft-L1 loss turns linear


def published_measurements(include_uncertain: bool = False) -> list[Measurement]:
    """The published training runs shipped with meshplan, as measurements (rows marked UNCERTAIN left out)."""
    from meshplan.calibrate.published import load_published_runs

    runs, _ = load_published_runs()
    return [Measurement(r.id, r.model, r.cluster, r.workload, r.strategy, r.measured_tokens_per_s_per_gpu)
            for r in runs if include_uncertain or not r.uncertain]


def predict(runs: Sequence[Measurement], eff: Efficiency) -> np.ndarray:
    """Predicted tokens/s per GPU of each run."""
    out = np.empty(len(runs))
    for i, r in enumerate(runs):
        table = StrategyTable.from_strategies([r.strategy])
        out[i] = training_cost(r.model, r.cluster, r.workload, table, eff).tokens_per_s_per_gpu[0]
    return out


def _with(start: Efficiency, names: list[str], x: np.ndarray, source: str) -> Efficiency:
    gemm = dict(start.gemm)
    other: dict[str, float] = {}
    for name, value in zip(names, x):
        value = value * _UNIT.get(name, 1.0)
        if name.startswith("gemm."):
            gemm[name.removeprefix("gemm.")] = float(value)
        else:
            other[name] = float(value)
    return start.model_copy(update={"gemm": gemm, **other, "source": source})


def fit_efficiency(runs: Sequence[Measurement], start: Efficiency, source: str) -> FitResult:
    """Fit the factors that the runs can inform; the rest keep their starting values."""
    if len(runs) < 3:
        raise PlanError(f"{len(runs)} measured runs cannot calibrate the cost model; measure at least 3")
    measured = np.array([r.tokens_per_s_per_gpu for r in runs])
    archs = sorted({r.cluster.gpu.architecture for r in runs})
    names = [f"gemm.{a}" for a in archs] + (["attention_ratio"] if any(r.workload.flash_attention for r in runs) else [])
    if any(r.workload.precision == "fp8" for r in runs):
        names.append("fp8_ratio")
    if any(r.workload.tp_comm_overlap and r.strategy.tp > 1 for r in runs):
        names.append("tp_overlap")
    unit = np.array([_UNIT.get(n, 1.0) for n in names])
    x0 = np.array([start.gemm.get(n[5:], start.gemm[start.fallback_architecture]) if n.startswith("gemm.")
                   else getattr(start, n) for n in names]) / unit
    lower = np.array([_BOUNDS[n.split(".")[0]][0] for n in names]) / unit
    upper = np.array([_BOUNDS[n.split(".")[0]][1] for n in names]) / unit

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(predict(runs, _with(start, names, x, source)) / measured)

    before = residuals(np.clip(x0, lower, upper))
    sol = least_squares(residuals, np.clip(x0, lower, upper), bounds=(lower, upper), diff_step=1e-3, x_scale="jac",
                        loss="soft_l1", f_scale=ROBUST_SCALE)
    dof = max(len(runs) - len(names), 1)
    s2 = float(sol.fun @ sol.fun) / dof
    try:
        cov = np.linalg.pinv(sol.jac.T @ sol.jac) * s2
        stderr = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    except np.linalg.LinAlgError:  # pragma: no cover - degenerate Jacobian
        stderr = np.full(len(names), np.nan)
    fitted = _with(start, names, sol.x, source)
    gemm_err = {n[5:]: float(e) for n, e in zip(names, stderr) if n.startswith("gemm.")}
    fitted = fitted.model_copy(update={"gemm_uncertainty": gemm_err})
    return FitResult(fitted, names, sol.x * unit, stderr * unit, np.expm1(before), np.expm1(sol.fun))
