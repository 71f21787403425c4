"""Speed and size of `meshplan shard`'s ILP: Llama-3.1-8B's architecture cut to 2, 8 and 32 layers (32 is the real
model), on a 1D mesh of 8 and 2D meshes of 2x4 and 8x8 H100s, identical layers merged (the default) and not.

    .venv/bin/python benchmarks/shard_ilp.py [--no-unmerged]

Prints per row: operators traced, ILP groups, variables (binary), constraints, trace / build / solve seconds
and the total, and the predicted step time. Goal of issue 8: the 32-layer model on a 2D mesh in < 30 s in
total (Meta's AutoParallel reports 15.1 s build + 36.5 s solve for Llama-3 8B on 64 GPUs).
"""

from __future__ import annotations

import argparse
import sys
import time

from meshplan.shard.ilp import solve_ilp
from meshplan.shard.mesh import LogicalMesh
from meshplan.shard.problem import build_problem
from meshplan.shard.trace import trace_decoder
from meshplan.specs import load_gpu, load_model

SEQ_LEN = 4096  # tokens per sequence
TIME_LIMIT_S = 300.0  # per solve


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-unmerged", action="store_true", help="skip the rows without layer merging")
    args = parser.parse_args()
    gpu = load_gpu("H100")
    base = load_model("Llama-3.1-8B")
    trace_decoder(base.model_copy(update={"num_layers": 1}), 1, 128)  # warm-up: imports, fx
    print(f"{'layers':>6} {'mesh':>5} {'merge':>5} {'ops':>6} {'groups':>6} {'vars (binary)':>16} {'constr':>7} "
          f"{'trace s':>8} {'build s':>8} {'solve s':>8} {'total s':>8} {'step ms':>8}")
    for layers in (2, 8, 32):
        spec = base.model_copy(update={"num_layers": layers})
        for shape in ((8,), (2, 4), (8, 8)):
            batch = 8 if len(shape) == 1 or shape[0] == 2 else 64  # sequences per step: 1 per GPU on 8x8
            started = time.perf_counter()
            graph = trace_decoder(spec, batch, SEQ_LEN)
            traced = time.perf_counter() - started
            mesh = LogicalMesh.build(shape, gpu)
            for merge in (True, False):
                if not merge and args.no_unmerged:
                    continue
                problem = build_problem(graph, mesh, merge=merge)
                sol = solve_ilp(problem, gpu.hbm_bytes, TIME_LIMIT_S)
                build = problem.build_s + sol.build_s
                total = traced + build + sol.solve_s
                flag = "" if sol.optimal else " (time limit)"
                print(f"{layers:>6} {'x'.join(map(str, shape)):>5} {'yes' if merge else 'no':>5} {len(graph.ops):>6} "
                      f"{len(problem.groups):>6} {sol.num_vars:>8,} ({sol.num_binary:>5,}) {sol.num_constraints:>7,} "
                      f"{traced:>8.2f} {build:>8.2f} {sol.solve_s:>8.2f} {total:>8.2f} {sol.objective_s * 1e3:>8.1f}{flag}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
