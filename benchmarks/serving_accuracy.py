"""Predicted vs measured TTFT, TPOT and output throughput for every row of the published serving runs.

    .venv/bin/python benchmarks/serving_accuracy.py            # summary per metric and per engine
    .venv/bin/python benchmarks/serving_accuracy.py --rows     # and every row

Predictions are those of `meshplan serve --estimate`: steady-state means for closed-loop and offline rows,
the scheduler simulation for finite request rates. TTFT of offline (all-at-once) rows is not compared: it
depends on the number of requests in the run, which no source states. The factors are fitted on the rows not
marked UNCERTAIN (benchmarks/fit_serving.py); no factor is set per row. Goal: mean |error| <= 15% per metric.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np

from meshplan.calibrate.published_serving import load_published_serving_runs
from meshplan.serve.efficiency import default_serving_efficiency
from meshplan.serve.fit import METRICS, predict_run


def _summary(label: str, errors: dict[str, list[float]]) -> str:
    parts = []
    for m in METRICS:
        e = np.abs(np.array(errors.get(m, [])))
        if len(e):
            parts.append(f"{m} n={len(e):3d} mean {np.mean(e):6.1%} median {np.median(e):6.1%} max {np.max(e):7.1%}")
        else:
            parts.append(f"{m} n=  0")
    return f"{label:24s} " + " | ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", action="store_true", help="print every row")
    args = parser.parse_args()
    runs, skipped = load_published_serving_runs()
    eff = default_serving_efficiency()
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        pred = predict_run(run, eff, simulate_rates=True)
        cells = []
        for m in METRICS:
            measured = pred.measured[m]
            if not measured:
                continue
            err = pred.predicted[m] / measured - 1.0
            for key in ("all", f"engine {run.engine}", "fitted rows" if not run.uncertain else "UNCERTAIN rows"):
                groups[key][m].append(err)
            cells.append(f"{m} {pred.predicted[m]:,.0f}/{measured:,.0f} ({err:+.0%})")
        if args.rows:
            print(f"{run.id:62s} {'; '.join(cells)}")
    print(f"{len(runs)} rows ({len(skipped)} skipped by the loader); error = predicted / measured - 1")
    for key in sorted(groups, key=lambda k: (k != "all", k)):
        print(_summary(key, groups[key]))
    goal = all(np.mean(np.abs(groups["all"][m])) <= 0.15 for m in METRICS)
    print(f"goal mean |error| <= 15% on every metric: {'met' if goal else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
