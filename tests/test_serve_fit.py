"""The shipped serving factors: physical, fitted to the published runs, and predicting them."""

from __future__ import annotations

import numpy as np

from meshplan.calibrate.published_serving import load_published_serving_runs
from meshplan.serve.efficiency import default_serving_efficiency
from meshplan.serve.fit import METRICS, predict_run


def test_factors_are_physical_and_say_where_they_come_from() -> None:
    eff = default_serving_efficiency()
    assert "published serving runs" in eff.source
    assert all(0.3 <= v <= 0.9 for v in eff.compute.values())
    assert 0.5 <= eff.hbm <= 0.95  # STREAM-like kernels reach ~0.8-0.9 of datasheet HBM bandwidth
    assert all(0.0 <= v <= 0.01 for v in eff.iteration_overhead_s.values())  # a few ms per iteration at most


def test_published_runs_are_predicted() -> None:
    # Regression guard on the accuracy benchmark (benchmarks/serving_accuracy.py): medians per metric on the
    # rows the fit used; a change of the cost model that breaks the fit fails here.
    runs, _ = load_published_serving_runs()
    eff = default_serving_efficiency()
    errors: dict[str, list[float]] = {m: [] for m in METRICS}
    for run in runs:
        if run.uncertain:
            continue
        pred = predict_run(run, eff)
        for m in METRICS:
            if pred.measured[m]:
                errors[m].append(abs(pred.predicted[m] / pred.measured[m] - 1.0))
    assert np.median(errors["throughput"]) < 0.15
    assert np.median(errors["tpot"]) < 0.2
    assert np.median(errors["ttft"]) < 0.3
    assert len(errors["throughput"]) >= 70 and len(errors["tpot"]) >= 70 and len(errors["ttft"]) >= 60
