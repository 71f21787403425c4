"""Run every valid strategy of a small model on 4 CPU processes (gloo) and print what each measured.

    .venv/bin/python benchmarks/run_matrix.py [--nproc 4] [--steps 4] [--limit N]

The space is meshplan's own (`meshplan.space`) for a tiny Llama-style model (8 layers, 8 heads, 4 KV heads)
with the micro-batch fixed at 1 and ZeRO in {0, 1, 3}; strategies the executor cannot run (cp, ep) are
skipped with the reason. Per strategy: median step time, tokens/s, peak memory of the largest rank, and loss
and gradient-norm parity against one process. On this machine (2 cores shared by all ranks) times mostly
measure framework overhead and vary by ±30-50% between launches.
"""

from __future__ import annotations

import argparse
import sys
import time

from meshplan.cost.efficiency import default_efficiency
from meshplan.errors import PlanError
from meshplan.run.config import RunConfig
from meshplan.run.launch import RunFailed, launch, launch_many
from meshplan.run.parallel import check_runnable
from meshplan.search.base import SearchRequest
from meshplan.space import SpaceConstraints, build_axes, chunks, prune
from meshplan.specs import ModelSpec, TrainWorkload, load_gpu, make_cluster

TINY = ModelSpec(name="tiny-8L", num_layers=8, hidden=128, ffn_hidden=256, num_heads=8, num_kv_heads=4, head_dim=16,
                 vocab=256, gated_mlp=True, tied_embeddings=False)


def strategies(nproc: int, batch: int, seq: int) -> list:  # type: ignore[type-arg]
    cluster = make_cluster(load_gpu("H100"), nproc)
    workload = TrainWorkload(global_batch=batch, seq_len=seq)
    constraints = SpaceConstraints(micro_batch=1, max_cp=1, max_ep=1)
    req = SearchRequest(model=TINY, cluster=cluster, workload=workload, constraints=constraints,
                        efficiency=default_efficiency())
    out = []
    for _, table in chunks(build_axes(TINY, cluster, workload, constraints), nproc):
        valid, _ = prune(table, TINY, cluster, workload, req.constraints)
        rows = table.take(valid)
        out += [rows.row(i) for i in range(len(rows)) if rows.row(i).zero in (0, 1, 3)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="run only the first N strategies")
    parser.add_argument("--per-launch", type=int, default=12, help="strategies per torchrun launch")
    args = parser.parse_args()
    batch = 8
    todo = strategies(args.nproc, batch, args.seq_len)[: args.limit]
    print(f"{len(todo)} strategies of {TINY.name} on {args.nproc} processes, global batch {batch} x {args.seq_len}")
    print(f"{'strategy':42s} {'step ms':>8s} {'tokens/s':>9s} {'peak MB':>8s} {'loss diff':>9s} {'gnorm diff':>10s}")
    worst = 0.0
    failed = 0
    started = time.perf_counter()
    runnable = []
    for s in todo:
        try:
            check_runnable(TINY, s, batch, args.seq_len)
            runnable.append(s)
        except PlanError as exc:
            print(f"{s.label():42s} skipped: {exc}")
    configs = [RunConfig(model=TINY, strategy=s, global_batch=batch, seq_len=args.seq_len, steps=args.steps,
                         lr=1e-3, timeout_s=120) for s in runnable]
    for start in range(0, len(configs), args.per_launch):  # several strategies per torchrun start-up
        group = configs[start:start + args.per_launch]
        try:
            results = launch_many(group, args.nproc)
        except RunFailed:  # isolate the failing strategy: run the group one by one
            results = []
            for cfg in group:
                try:
                    results.append(launch(cfg, args.nproc))
                except RunFailed as exc:
                    failed += 1
                    print(f"{cfg.strategy.label():42s} FAILED: {exc}")
        for r in results:
            worst = max(worst, r.max_loss_rel_diff or 0.0, r.max_grad_norm_rel_diff or 0.0)
            print(f"{r.config.strategy.label():42s} {r.step_time_s * 1e3:8.1f} {r.tokens_per_s:9,.0f} "
                  f"{r.peak_memory_bytes / 1e6:8.2f} {r.max_loss_rel_diff:9.1e} {r.max_grad_norm_rel_diff:10.1e}",
                  flush=True)
    print(f"worst relative difference from one process: {worst:.1e}; failures: {failed}; "
          f"{time.perf_counter() - started:.0f} s in all")
    return 1 if failed or worst > 1e-4 else 0


if __name__ == "__main__":
    sys.exit(main())
