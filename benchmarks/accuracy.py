"""Predicted vs measured tokens/s per GPU (and peak memory where published) on the published training runs.

    .venv/bin/python benchmarks/accuracy.py [--loso]

Prints one row per run, then the mean and max absolute percentage error overall and per source.
`--loso` adds a leave-one-source-out check: the factors are refitted without a source, then that source is
predicted — an estimate of the error on runs the fit has never seen.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np

from meshplan.calibrate.fit import Measurement, fit_efficiency, predict
from meshplan.calibrate.published import load_published_runs
from meshplan.cost.efficiency import default_efficiency
from meshplan.cost.training import training_cost
from meshplan.strategy import StrategyTable


def _summary(label: str, errors: list[float]) -> str:
    e = np.abs(np.array(errors))
    return f"{label:22s} n={len(e):3d}  mean |err| {e.mean():6.1%}  max {e.max():6.1%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loso", action="store_true", help="also run leave-one-source-out refits")
    args = parser.parse_args()
    runs, skipped = load_published_runs()
    eff = default_efficiency()
    print(f"efficiency factors: {eff.source}")
    print(f"{'run':44s} {'layout':34s} {'meas tok/s/GPU':>14s} {'pred':>9s} {'err':>7s}  {'mem meas':>8s} {'pred':>6s}")
    by_source: dict[str, list[float]] = defaultdict(list)
    certain: list[float] = []
    mem_err: list[float] = []
    for r in runs:
        table = StrategyTable.from_strategies([r.strategy])
        c = training_cost(r.model, r.cluster, r.workload, table, eff)
        pred = float(c.tokens_per_s_per_gpu[0])
        err = pred / r.measured_tokens_per_s_per_gpu - 1
        by_source[r.source_group].append(err)
        if "UNCERTAIN" not in r.notes:
            certain.append(err)
        mem = ""
        if r.measured_memory_bytes:
            pm = float(c.peak_memory_bytes[0])
            mem_err.append(pm / r.measured_memory_bytes - 1)
            mem = f"{r.measured_memory_bytes / 1e9:7.1f}G {pm / 1e9:5.1f}G"
        flag = " (UNCERTAIN)" if "UNCERTAIN" in r.notes else ""
        print(f"{r.id[:44]:44s} {r.strategy.label()[:34]:34s} {r.measured_tokens_per_s_per_gpu:14,.1f} {pred:9,.1f} "
              f"{err:+7.1%}  {mem}{flag}")
    print()
    print(f"{len(runs)} runs modelled, {len(skipped)} rows skipped:")
    for s in skipped:
        print(f"  skipped {s.id}: {s.reason}")
    print()
    all_err = [e for v in by_source.values() for e in v]
    print(_summary("all runs", all_err))
    print(_summary("without UNCERTAIN", certain))
    # DeepSpeed ZeRO-3 as measured in 2021 ran 1.3-4x slower than its communication volume allows (per-parameter
    # gathers); meshplan prices ZeRO-3 as today's FSDP, so these rows are shown apart, not tuned away.
    modern = [e for s, v in by_source.items() if s not in ("narayanan21-zero3", "opt") for e in v]
    print(_summary("w/o 2021 ZeRO-3 & OPT", modern))
    for source in sorted(by_source):
        print(_summary(f"  {source}", by_source[source]))
    if mem_err:
        print(_summary("peak memory", mem_err))

    if args.loso:
        print("\nleave-one-source-out (refit without the source, then predict it):")
        meas = [Measurement(r.id, r.model, r.cluster, r.workload, r.strategy, r.measured_tokens_per_s_per_gpu)
                for r in runs if "UNCERTAIN" not in r.notes]
        groups = {r.id: r.source_group for r in runs}
        held_all: list[float] = []
        for source in sorted(by_source):
            train = [m for m in meas if groups[m.id] != source]
            test = [m for m in meas if groups[m.id] == source]
            if not test:
                continue
            fitted = fit_efficiency(train, eff, source=f"without {source}").efficiency
            errs = predict(test, fitted) / np.array([m.tokens_per_s_per_gpu for m in test]) - 1
            held_all += list(errs)
            print(_summary(f"  {source}", list(errs)))
        print(_summary("held-out, all", held_all))
    return 0


if __name__ == "__main__":
    sys.exit(main())
