"""How low can any TTFT model go on the closed-loop rows of the published serving data? A lower bound.

    .venv/bin/python benchmarks/serving_ttft_floor.py

The AIConfigurator rows (fixed concurrency C, fixed lengths) give TTFT per engine for several models, GPUs and
layouts. Whatever the scheduler and client do, a model of stated inputs prices TTFT from the prompt's prefill
time P and the concurrency. This script fits, per engine, curves with MORE free parameters than meshplan spends on
TTFT (3 or 4 per engine, against meshplan's request overhead, lockstep share and iteration overhead), directly
minimising the mean |error| the goal is stated in, in-sample (optimistic):

    a + b·P + c·C·P                  (fixed part, own prefill, queueing that grows with the others' prefills)
    a + b·P + c·C·P + d·C            (plus a cost per request in flight)
    a + b·P + c·sqrt(C)·P            (queueing that grows more slowly)
    a + b·P + c·C·P + d·P·u/(1-u)    (plus an M/D/1 wait at the prefill utilisation u = C·P / (osl·TPOT))
    a + b·P + c·C·P + d·C·TPOT       (plus waiting on decode steps, with the MEASURED TPOT)

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

Covariates = dict[str, np.ndarray]
Form = Callable[[np.ndarray, Covariates], np.ndarray]
# name: (free parameters, curve). p: prefill of one prompt (s), c: concurrency, u: the prefill's share of the
# instance's time if clients were spread out, C·P / (osl·TPOT) (the M/D/1 wait grows as u / (1 - u)),
# tpot: the MEASURED time per output token (a model could not do better than knowing it).
FORMS: dict[str, tuple[int, Form]] = {
    "a + b*P + c*C*P": (3, lambda x, v: x[0] + x[1] * v["p"] + x[2] * v["c"] * v["p"]),
    "a + b*P + c*C*P + d*C": (4, lambda x, v: x[0] + x[1] * v["p"] + x[2] * v["c"] * v["p"] + x[3] * v["c"]),
    "a + b*P + c*sqrt(C)*P": (3, lambda x, v: x[0] + x[1] * v["p"] + x[2] * np.sqrt(v["c"]) * v["p"]),
    "a + b*P + c*C*P + d*P*u/(1-u)": (4, lambda x, v: x[0] + x[1] * v["p"] + x[2] * v["c"] * v["p"]
                                      + x[3] * v["p"] * v["u"] / (1.0 - v["u"])),
    "a + b*P + c*C*P + d*C*TPOT": (4, lambda x, v: x[0] + x[1] * v["p"] + x[2] * v["c"] * v["p"]
                                   + x[3] * v["c"] * v["tpot"]),
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


def _best(form: Form, n: int, v: Covariates, t: np.ndarray) -> tuple[float, np.ndarray]:
    """Least mean |pct error| over non-negative parameters, from several starts."""
    def loss(x: np.ndarray) -> float:
        return float(np.mean(np.abs(form(np.abs(x), v) / t - 1.0)))

    scale = float(np.median(t))
    rng = np.random.default_rng(0)
    starts = [np.array([0.5, 1.0, 0.05, 0.01]), np.array([0.1, 3.0, 0.1, 0.1]), np.array([0.9, 0.5, 0.01, 0.001])]
    starts += [10.0 ** rng.uniform(-3.0, 0.5, 4) for _ in range(16)]  # log-uniform over the plausible ranges
    best = None
    for start in starts:
        x0 = start[:n] * np.array([scale, 1.0, 1.0, 1.0][:n])
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
        tpot = np.array([r.measured_tpot_ms for r in rows], dtype=float) / 1e3
        osl = np.array([r.osl for r in rows], dtype=float)
        floors = []
        for label, prefill in (("P = meshplan prefill", _prefill_model_s), ("P = FLOPs / datasheet", _prefill_datasheet_s)):
            p = np.array([prefill(r) for r in rows])
            v = {"p": p, "c": c, "tpot": tpot, "u": np.clip(c * p / (osl * tpot), 0.0, 0.95)}
            for name, (n, form) in FORMS.items():
                err, _ = _best(form, n, v, t)
                floors.append(err)
                print(f"  {engine:7s} n={len(rows):2d}  {label:22s} {name:31s} mean |error| {err:6.1%}")
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
