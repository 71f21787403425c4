"""How low can any TTFT model go on the closed-loop rows of the published serving data? A lower bound.

    .venv/bin/python benchmarks/serving_ttft_floor.py

The AIConfigurator rows (fixed concurrency C, fixed lengths) give TTFT per engine for several models, GPUs and
layouts. Whatever the scheduler and client do, a model of stated inputs prices TTFT from the prompt's prefill
time P and the concurrency. This script fits, per engine, curves with MORE free parameters than meshplan spends on
TTFT (3 or 4 per engine, against meshplan's request overhead, lockstep share and iteration overhead), directly
minimising the mean |error| the goal is stated in, in-sample (optimistic):

    a + b·P + c·C·P          (fixed part, own prefill, queueing that grows with the others' prefills)
    a + b·P + c·C·P + d·C    (plus a cost per request in flight)
    a + b·P + c·sqrt(C)·P    (queueing that grows more slowly)

with P taken two ways: meshplan's prefill time of one prompt (fitted factors), and the prompt's FLOPs per GPU over
the datasheet peak (no fitted factor at all). The best of them is a floor for these rows: a model of P and C that
is fitted to all rows at once cannot beat a curve fitted per engine to the same rows. The floor over these rows,
weighted by their share of all TTFT rows, bounds the mean TTFT error of the whole file from below even if every
other row were predicted exactly.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize  # type: ignore[import-untyped]

from meshplan.calibrate.published_serving import PublishedServingRun, load_published_serving_runs
from meshplan.cost.flops import lm_head_gemm
from meshplan.serve.cost import compute_dtype, iteration_model
from meshplan.serve.deployment import DeploymentTable
from meshplan.serve.efficiency import default_serving_efficiency
from meshplan.serve.fit import predict_run, run_inputs
from meshplan.specs.cluster import make_cluster

Form = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
FORMS: dict[str, tuple[int, Form]] = {
    "a + b*P + c*C*P": (3, lambda x, p, c: x[0] + x[1] * p + x[2] * c * p),
    "a + b*P + c*C*P + d*C": (4, lambda x, p, c: x[0] + x[1] * p + x[2] * c * p + x[3] * c),
    "a + b*P + c*sqrt(C)*P": (3, lambda x, p, c: x[0] + x[1] * p + x[2] * np.sqrt(c) * p),
}


def _prefill_model_s(run: PublishedServingRun) -> float:
    """meshplan's time of one prompt's prefill alone (the iteration model with the shipped factors)."""
    eff = default_serving_efficiency()
    dep, work, _ = run_inputs(run)
    it = iteration_model(run.model, make_cluster(run.gpu, max(run.num_gpus, 1)), DeploymentTable.of([dep]), eff,
                         run.engine)
    p = float(work.prefill_tokens)
    return float(it.time(0.0, 0.0, p, p / 2.0)[0] - it.time(0.0, 0.0, 0.0, 0.0)[0])


def _prefill_datasheet_s(run: PublishedServingRun) -> float:
    """A prompt's FLOPs per GPU over the datasheet peak of its compute dtype: 2 per active parameter per token
    (Kaplan et al. 2020, §2.1) plus causal attention, 2·(q+o)·isl²/2 per layer (PaLM App. B); no fitted factor."""
    m, isl = run.model, float(run.isl)
    head = lm_head_gemm(m)
    linear = 2.0 * (m.active_params() - m.embedding_params() - head.n * head.k) * isl
    attention = 2.0 * (m.q_dim + m.attn_out_dim) * m.num_layers * isl * isl / 2.0
    gpus = run.tp * run.pp * run.attn_dp
    peak = run.gpu.peak_flops[compute_dtype(run.precision, run.gpu.peak_flops)]
    return (linear + attention) / gpus / peak


def _best(form: Form, n: int, p: np.ndarray, c: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
    """Least mean |pct error| over non-negative parameters, from several starts."""
    def loss(x: np.ndarray) -> float:
        return float(np.mean(np.abs(form(np.abs(x), p, c) / t - 1.0)))

    scale = float(np.median(t))
    best = None
    for start in ([0.5, 1.0, 0.05, 0.0], [0.1, 3.0, 0.1, 0.001], [0.9, 0.5, 0.01, 0.002], [0.0, 5.0, 0.3, 0.0]):
        x0 = np.array(start[:n]) * np.array([scale, 1.0, 1.0, scale / 100.0][:n])
        res = minimize(loss, x0, method="Nelder-Mead", options={"maxiter": 40000, "xatol": 1e-10, "fatol": 1e-12})
        if best is None or res.fun < best.fun:
            best = res
    assert best is not None
    return float(best.fun), np.abs(best.x)


def main() -> int:
    runs, _ = load_published_serving_runs()
    eff = default_serving_efficiency()
    ttft_rows = [r for r in runs if predict_run(r, eff).measured["ttft"]]
    closed = defaultdict(list)
    for r in ttft_rows:
        if r.source_group.startswith("aiconfigurator") and r.concurrency is not None:
            closed[r.engine].append(r)
    print(f"{len(ttft_rows)} rows with a measured TTFT; {sum(map(len, closed.values()))} of them closed-loop "
          "AIConfigurator rows (fixed concurrency, fixed lengths)")
    total_floor = 0.0
    for engine, rows in sorted(closed.items()):
        t = np.array([r.measured_ttft_ms for r in rows], dtype=float) / 1e3
        c = np.array([r.concurrency for r in rows], dtype=float)
        floors = []
        for label, prefill in (("P = meshplan prefill", _prefill_model_s), ("P = FLOPs / datasheet", _prefill_datasheet_s)):
            p = np.array([prefill(r) for r in rows])
            for name, (n, form) in FORMS.items():
                err, x = _best(form, n, p, c, t)
                floors.append(err)
                print(f"  {engine:7s} n={len(rows):2d}  {label:22s} {name:24s} mean |error| {err:6.1%}")
        total_floor += min(floors) * len(rows)
        own = np.mean([abs(predict_run(r, eff).predicted["ttft"] / r.measured_ttft_ms - 1.0) for r in rows])
        print(f"  {engine:7s} floor (best curve): {min(floors):.1%}; meshplan's model on these rows: {own:.1%}")
    n_closed = sum(map(len, closed.values()))
    print(f"floor on the {n_closed} closed-loop rows: mean |error| >= {total_floor / n_closed:.1%}")
    print(f"bound on all {len(ttft_rows)} TTFT rows, every other row exact: mean |error| >= "
          f"{total_floor / len(ttft_rows):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
