"""Fit the serving cost model's efficiency factors to the published serving runs and write them to the package.

    .venv/bin/python benchmarks/fit_serving.py          # fit, print, write meshplan/data/efficiency/serving.json
    .venv/bin/python benchmarks/fit_serving.py --dry-run
    .venv/bin/python benchmarks/fit_serving.py --dry-run --leave-one-engine-out   # over-fitting checks
    .venv/bin/python benchmarks/fit_serving.py --dry-run --leave-one-source-out

Rows marked UNCERTAIN in the data (undocumented layouts, an unnamed engine) are left out of the fit; they are
still reported by serving_accuracy.py. The one exception is a second stage: the unnamed engine of splitwise-sim's
profiles ("unknown") runs its all-reduces without a one-shot kernel, and the NCCL step latency that prices them
can come only from that engine's own rows; it is fitted on them with every shared factor held. Factors of an engine or architecture without fitted rows keep their
starting value and say so through the fallback rules of `ServingEfficiency`.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources

import numpy as np

from meshplan.calibrate.published_serving import PublishedServingRun, load_published_serving_runs
from meshplan.serve.efficiency import ServingEfficiency
from meshplan.serve.fit import METRICS, fit_serving, log_errors, predict_run

START = ServingEfficiency(
    compute={"ampere": 0.6, "hopper": 0.6, "blackwell": 0.6}, hbm=0.8,
    iteration_overhead_s={"trtllm": 0.002, "vllm": 0.003, "sglang": 0.003, "unknown": 0.003},
    request_overhead_s={"trtllm": 0.02, "vllm": 0.02, "sglang": 0.02, "unknown": 0.02},
    lockstep_share={"trtllm": 0.3, "vllm": 0.3, "sglang": 0.3, "unknown": 0.0},
    sequence_overhead_s=1e-5,
)


def _mean_abs_by_metric(runs: list[PublishedServingRun], eff: ServingEfficiency) -> str:
    errors: dict[str, list[float]] = {m: [] for m in METRICS}
    for run in runs:
        pred = predict_run(run, eff, simulate_rates=True)
        for m in METRICS:
            if pred.measured[m]:
                errors[m].append(abs(pred.predicted[m] / pred.measured[m] - 1.0))  # type: ignore[operator]
    return "  ".join(f"{m} n={len(e):3d} mean {np.mean(e):6.1%}" if e else f"{m} n=  0" for m, e in errors.items())


def _leave_one_engine_out(runs: list[PublishedServingRun]) -> None:
    """Fit without one engine's rows, then price them: the error a new engine's runs would see."""
    print("leave one engine out (fit on the others, price the left-out rows with the fallback engine's overheads):")
    for engine in sorted({r.engine for r in runs}):
        held = [r for r in runs if r.engine == engine]
        fitted = fit_serving([r for r in runs if r.engine != engine], START).efficiency
        fallback = "vllm" if engine == "trtllm" else "trtllm"
        blind = fitted.model_copy(update={
            "iteration_overhead_s": {k: v for k, v in fitted.iteration_overhead_s.items() if k != engine},
            "request_overhead_s": {k: v for k, v in fitted.request_overhead_s.items() if k != engine},
            "lockstep_share": {k: v for k, v in fitted.lockstep_share.items() if k != engine},
            "fallback_engine": fallback})
        print(f"  {engine:8s} ({len(held):3d} rows)  {_mean_abs_by_metric(held, blind)}")


def _leave_one_source_out(runs: list[PublishedServingRun]) -> None:
    """Fit without one source family's rows, then price them: the error a new source's runs would see (factors
    only that source informs keep their starting values)."""
    print("leave one source out (fit on the other sources, price the left-out rows):")
    for source in sorted({r.source_group for r in runs}):
        held = [r for r in runs if r.source_group == source]
        fitted = fit_serving([r for r in runs if r.source_group != source], START).efficiency
        print(f"  {source:22s} ({len(held):3d} rows)  {_mean_abs_by_metric(held, fitted)}")


def _fit_unnamed_engine(all_runs: list[PublishedServingRun], eff: ServingEfficiency) -> ServingEfficiency:
    """Second stage: the NCCL all-reduce step latency of the unnamed engine, on its own (UNCERTAIN) rows only."""
    rows = [r for r in all_runs if r.engine == "unknown"]
    if not rows:
        return eff
    base = eff.model_copy(update={"allreduce_step_latency_s": {"unknown": 2e-5}})
    stage = fit_serving(rows, base, names=["allreduce_step_latency_s.unknown"])
    print(f"second stage on the unnamed engine's {len(rows)} rows (shared factors held):")
    for name, value, err in zip(stage.names, stage.values, stage.stderr, strict=True):
        print(f"  {name:30s} {value:10.4g} ± {err:.2g}")
    return stage.efficiency.model_copy(update={"source": eff.source})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print the fit, write nothing")
    parser.add_argument("--leave-one-engine-out", action="store_true",
                        help="also refit without each engine's rows and price those rows with the other engines' "
                             "factors (its own overheads unknown: the fallback engine's are used)")
    parser.add_argument("--leave-one-source-out", action="store_true",
                        help="also refit without each source family's rows and price those rows")
    args = parser.parse_args()
    all_runs, _ = load_published_serving_runs()
    runs = [r for r in all_runs if not r.uncertain]
    result = fit_serving(runs, START)
    print(f"fitted on {len(runs)} runs ({len(all_runs) - len(runs)} UNCERTAIN left out), {result.num_points} figures")
    for name, value, err in zip(result.names, result.values, result.stderr, strict=True):
        print(f"  {name:30s} {value:10.4g} ± {err:.2g}")
    for label, eff in (("before", START), ("after", result.efficiency)):
        e = np.abs(np.expm1(log_errors(runs, eff)))
        print(f"  {label:6s}: mean |error| {np.mean(e):.1%}, median {np.median(e):.1%}, max {np.max(e):.1%}")
    final = _fit_unnamed_engine(all_runs, result.efficiency)
    if args.leave_one_engine_out:
        _leave_one_engine_out(runs)
    if args.leave_one_source_out:
        _leave_one_source_out(runs)
    if args.dry_run:
        return 0
    path = resources.files("meshplan") / "data" / "efficiency" / "serving.json"
    text = final.model_dump_json(indent=2) + "\n"
    with resources.as_file(path) as p:
        p.write_text(text, encoding="utf-8")
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
