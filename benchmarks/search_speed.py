"""Speed of the exhaustive search: Llama-3.1-405B on 16,384 H100, the whole strategy space.

    .venv/bin/python benchmarks/search_speed.py [--sample 20000]

Prints strategies enumerated, valid and priced, the wall time and strategies per second of the vectorised
search, then the plain per-strategy loop (`search/reference.py`) on an even sample of about `--sample`
strategies of the same space (every k-th), and the speed-up measured in this run.
"""

from __future__ import annotations

import argparse
import sys
import time

from meshplan.cost.efficiency import default_efficiency
from meshplan.search import SearchRequest, search_exhaustive
from meshplan.search.reference import search_reference
from meshplan.specs import TrainWorkload, load_gpu, load_model, make_cluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=20000, help="strategies for the plain loop")
    args = parser.parse_args()
    req = SearchRequest(model=load_model("Llama-3.1-405B"), cluster=make_cluster(load_gpu("H100"), 16384),
                        workload=TrainWorkload(global_batch=2048, seq_len=8192), efficiency=default_efficiency())
    search_exhaustive(req)  # warm-up: imports, catalog loading
    started = time.perf_counter()
    fast = search_exhaustive(req)
    wall = time.perf_counter() - started
    rate = fast.space_size / wall
    print(f"space: {fast.space_size:,} strategies enumerated, {fast.num_valid:,} valid and priced, {fast.num_fit:,} fit")
    print(f"vectorised: {wall:.3f} s, {rate:,.0f} strategies/s (priced: {fast.num_valid / wall:,.0f}/s)")
    print(f"winner: {fast.ranked.table.row(0).label()}, {float(fast.ranked.cost.tokens_per_s_per_gpu[0]):,.1f} tokens/s/GPU, "
          f"MFU {float(fast.ranked.cost.mfu[0]):.1%}")
    every = max(fast.space_size // args.sample, 1)
    visited = len(range(0, fast.space_size, every))
    started = time.perf_counter()
    slow = search_reference(req, every=every)
    loop = time.perf_counter() - started
    loop_rate = visited / loop
    print(f"plain loop on every {every:,}th strategy ({visited:,}): {loop:.2f} s, {loop_rate:,.0f} strategies/s "
          f"({slow.num_valid:,} of them valid and priced)")
    print(f"speed-up: {rate / loop_rate:,.0f}x (whole space in {fast.space_size / loop_rate:,.0f} s by the loop)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
