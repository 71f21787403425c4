"""Speed of the serving search: Llama-3.1-70B on 64 GPUs with latency targets under Poisson arrivals
(queueing: the best candidates are simulated by the discrete-event scheduler). Goal: < 5 s.

    .venv/bin/python benchmarks/serve_speed.py
"""

from __future__ import annotations

import sys
import time

from meshplan.serve.search import ServeSearchRequest, search_serving
from meshplan.serve.workload import LatencyTarget, ServeWorkload
from meshplan.specs import load_gpu, load_model

CASES = [
    ("70B, 64 x H100, 40 req/s, TTFT 2s@p90, TPOT 50ms@p99", ("H100",), ServeWorkload(isl=2048, osl=512, request_rate=40.0),
     "throughput"),
    ("70B, 64 x H100/H200/B200, 40 req/s, same targets", ("H100", "H200", "B200"),
     ServeWorkload(isl=2048, osl=512, request_rate=40.0), "throughput"),
    ("70B, up to 64 x H100, fewest GPUs for 40 req/s", ("H100",), ServeWorkload(isl=2048, osl=512, request_rate=40.0),
     "gpus"),
    ("70B, 64 x H100, concurrency 512", ("H100",), ServeWorkload(isl=2048, osl=512, concurrency=512), "throughput"),
]


def main() -> int:
    model = load_model("Llama-3.1-70B")
    for label, gpus, work, objective in CASES:
        req = ServeSearchRequest(model=model, gpus=tuple(load_gpu(g) for g in gpus), num_gpus=64, workload=work,
                                 engine="vllm", precisions=("bf16", "fp8"),
                                 ttft=LatencyTarget.parse("2s@p90", "ttft"), tpot=LatencyTarget.parse("50ms@p99", "tpot"),
                                 objective=objective)  # type: ignore[arg-type]
        start = time.perf_counter()
        result = search_serving(req)
        wall = time.perf_counter() - start
        best = result.ranked[0]
        print(f"{label:58s} {wall:5.2f} s  {result.num_candidates:6,} priced, {result.num_fit:5,} fit, "
              f"best {best.gpu} {best.deployment.label()} on {best.num_gpus} GPUs, {best.per_gpu:,.0f} tok/s/GPU "
              f"{'(< 5 s: yes)' if wall < 5 else '(< 5 s: NO)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
