"""Fit the training cost model's efficiency factors to the published runs and write them to the package.

    .venv/bin/python benchmarks/fit_training.py          # fit, print, write meshplan/data/efficiency/training.json
    .venv/bin/python benchmarks/fit_training.py --dry-run

Rows marked UNCERTAIN in the data are left out of the fit (they are still reported by accuracy.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources

import numpy as np

from meshplan.calibrate.fit import fit_efficiency, published_measurements
from meshplan.cost.efficiency import default_efficiency


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print the fit, write nothing")
    args = parser.parse_args()
    runs = published_measurements()
    start = default_efficiency()
    result = fit_efficiency(runs, start, source=f"fitted to {len(runs)} published training runs (benchmarks/fit_training.py)")
    print(f"fitted on {len(runs)} runs")
    for name, value, err in zip(result.names, result.values, result.stderr):
        print(f"  {name:24s} {value:9.4g} ± {err:.2g}")
    for label, e in (("before", result.error_before), ("after", result.error_after)):
        print(f"  {label:6s}: mean |error| {np.mean(np.abs(e)):.1%}, median {np.median(np.abs(e)):.1%}, max {np.max(np.abs(e)):.1%}")
    if not args.dry_run:
        path = resources.files("meshplan") / "data" / "efficiency" / "training.json"
        data = result.efficiency.model_dump(mode="json")
        data["gemm"] = {k: round(v, 4) for k, v in data["gemm"].items()}
        data["gemm_uncertainty"] = {k: round(v, 4) for k, v in data["gemm_uncertainty"].items()}
        for k in ("fp8_ratio", "ridge_factor", "attention_ratio", "tp_overlap", "intra_node_bandwidth",
                  "inter_node_bandwidth"):
            data[k] = round(data[k], 4)
        with open(str(path), "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
