"""Fit the serving cost model's efficiency factors to the published serving runs and write them to the package.

    .venv/bin/python benchmarks/fit_serving.py          # fit, print, write meshplan/data/efficiency/serving.json
    .venv/bin/python benchmarks/fit_serving.py --dry-run

Rows marked UNCERTAIN in the data (undocumented layouts, an unnamed engine) are left out of the fit; they are
still reported by serving_accuracy.py. Factors of an engine or architecture without fitted rows keep their
starting value and say so through the fallback rules of `ServingEfficiency`.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources

import numpy as np

from meshplan.calibrate.published_serving import load_published_serving_runs
from meshplan.serve.efficiency import ServingEfficiency
from meshplan.serve.fit import fit_serving, log_errors

START = ServingEfficiency(
    compute={"ampere": 0.6, "hopper": 0.6, "blackwell": 0.6}, hbm=0.8,
    iteration_overhead_s={"trtllm": 0.002, "vllm": 0.003, "sglang": 0.003, "unknown": 0.003},
    request_overhead_s={"trtllm": 0.02, "vllm": 0.02, "sglang": 0.02, "unknown": 0.02},
    sequence_overhead_s=1e-5, closed_loop_burst=0.2,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print the fit, write nothing")
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
    if args.dry_run:
        return 0
    path = resources.files("meshplan") / "data" / "efficiency" / "serving.json"
    text = result.efficiency.model_dump_json(indent=2) + "\n"
    with resources.as_file(path) as p:
        p.write_text(text, encoding="utf-8")
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
