"""One rank of `meshplan profile`: `python -m meshplan.measure.bench_worker PLAN.json OUT_DIR` under torchrun.

Every rank runs every microbenchmark at the same time as the others (GEMMs and copies too), so the figures are
what one process gets while N run: on a shared CPU that is a share of the cores, not a core. Rank 0 writes
OUT_DIR/progress ("done total") after each item and OUT_DIR/raw.json at the end; a failing rank writes
OUT_DIR/rank<r>.error.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _timed(fn: Any, min_seconds: float, device: torch.device, max_reps: int = 1000, reps: int | None = None) -> float:
    """Median seconds of one call of `fn`, over at least `min_seconds` of calls (after one warm-up call), or over
    exactly `reps` calls (collectives: every member must make the same number of calls)."""
    fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < (reps or max_reps) and (reps is not None or time.perf_counter() - started < min_seconds
                                               or len(times) < 3):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _window(fn: Any, seconds: float, device: torch.device) -> float:
    """Seconds per call of `fn` over a wall-clock window that every rank starts together (a barrier): on shared
    cores the processes then really compete, and each one's rate is its share."""
    fn()
    dist.barrier()
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or calls < 2:
        fn()
        calls += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - started) / calls


def _gemm(spec: dict[str, Any], device: torch.device) -> dict[str, Any]:
    m, n, k, dtype = spec["m"], spec["n"], spec["k"], DTYPES[spec["dtype"]]
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    c = torch.empty(m, n, device=device, dtype=dtype)
    seconds = _window(lambda: torch.matmul(a, b, out=c), spec["min_seconds"], device)
    return {**spec, "seconds": seconds}


def _copy(spec: dict[str, Any], device: torch.device) -> dict[str, Any]:
    x = torch.ones(spec["nbytes"] // 4, device=device)
    y = torch.empty_like(x)
    seconds = _window(lambda: y.copy_(x), spec["min_seconds"], device)
    return {**spec, "seconds": seconds}


def _collective(spec: dict[str, Any], groups: dict[int, Any], device: torch.device) -> dict[str, Any] | None:
    g, nbytes, op = spec["group_size"], spec["nbytes"], spec["collective"]
    rank = dist.get_rank()
    group = groups[g]
    member = rank < g
    x = torch.ones(max(nbytes // 4, g), device=device)
    n = x.numel() - x.numel() % g
    x = x[:n].contiguous()
    if op == "all_reduce":
        def fn() -> None:
            dist.all_reduce(x, group=group)
    elif op == "all_gather":
        parts = [torch.empty_like(x) for _ in range(g)]

        def fn() -> None:
            dist.all_gather(parts, x, group=group)
    elif op == "reduce_scatter":
        out = torch.empty(n // g, device=device)

        def fn() -> None:
            dist.reduce_scatter_tensor(out, x, group=group)
    elif op == "all_to_all":
        out_a2a = torch.empty_like(x)

        def fn() -> None:
            dist.all_to_all_single(out_a2a, x, group=group)
    elif op == "loaded_all_reduce":  # every rank computes between collectives, as in training
        work = torch.randn(spec["gemm_size"], spec["gemm_size"], device=device)
        waits: list[float] = []

        def fn() -> None:
            torch.matmul(work, work)
            t0 = time.perf_counter()
            dist.all_reduce(x, group=group)
            waits.append(time.perf_counter() - t0)
    else:  # send_recv between ranks 0 and 1 (group size 2)
        def fn() -> None:
            if rank == 0:
                dist.send(x, 1)
                dist.recv(x, 1)
            elif rank == 1:
                dist.recv(x, 0)
                dist.send(x, 0)
    dist.barrier()
    seconds = _timed(fn, spec["min_seconds"], device, reps=spec["reps"]) if member else 0.0
    if op == "loaded_all_reduce" and member:
        seconds = statistics.median(waits[1:])  # the collective alone, its wait for busy peers included
    if op == "send_recv":
        seconds /= 2.0  # a round trip is two one-way messages
    worst = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return {**spec, "seconds": float(worst)}


def _gathered(result: dict[str, Any], world: int) -> dict[str, Any]:
    """Every rank's seconds of a locally timed item (all ranks ran it at once)."""
    seconds: list[Any] = [None] * world
    dist.all_gather_object(seconds, result["seconds"])
    return {**result, "seconds_per_rank": seconds}


def run(plan: dict[str, Any], out: Path) -> dict[str, Any]:
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    rank, world = dist.get_rank(), dist.get_world_size()
    # every rank creates every group, in the same order (torch.distributed.new_group's rule)
    groups = {g: dist.new_group(list(range(g))) for g in sorted({c["group_size"] for c in plan["collectives"]})}
    items = [("gemm", s) for s in plan["gemm"]] + [("copy", s) for s in plan["copy"]] + \
        [("collective", s) for s in plan["collectives"]]
    results: dict[str, list[Any]] = {"gemm": [], "copy": [], "collective": [], "unsupported": []}
    for i, (kind, spec) in enumerate(items):
        r: dict[str, Any] | None
        if kind == "gemm":
            r = _gathered(_gemm(spec, device), world)
        elif kind == "copy":
            r = _gathered(_copy(spec, device), world)
        else:
            try:
                r = _collective(spec, groups, device)
            except (RuntimeError, NotImplementedError) as exc:  # e.g. a collective this backend lacks
                results["unsupported"].append({**spec, "error": str(exc).splitlines()[0]})
                r = None
                dist.barrier()
        if r is not None:
            results[kind].append(r)
        if rank == 0:
            (out / "progress").write_text(f"{i + 1} {len(items)}")
    return results


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    rank = int(os.environ.get("RANK", "0"))
    try:
        torch.set_num_threads(int(plan.get("threads", 1)))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=plan.get("timeout_s", 300)))
        results = run(plan, out)
        if rank == 0:
            results.update(backend=backend, world_size=dist.get_world_size(), torch=torch.__version__,
                           device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                           capability=list(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None,
                           device_memory_bytes=torch.cuda.get_device_properties(0).total_memory
                           if torch.cuda.is_available() else None)
            (out / "raw.json").write_text(json.dumps(results))
        dist.destroy_process_group()
        return 0
    except Exception as exc:  # noqa: BLE001 - report which rank failed and why, then fail the launch
        first = f"{type(exc).__name__}: {exc}".splitlines()[0]
        (out / f"rank{rank}.error").write_text(f"{time.time():.6f}\n{first}\n{traceback.format_exc()}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
