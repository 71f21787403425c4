"""`meshplan profile`: run the microbenchmarks on N local processes and fit them into a `HardwareProfile`.

GEMMs over shapes and dtypes, memory bandwidth, and all-reduce / all-gather / reduce-scatter / all-to-all /
send-recv over message and group sizes run under `torchrun` (gloo on CPU, NCCL on GPU, the same code:
`meshplan.measure.bench_worker`). The fits:

- GEMM: achieved FLOP/s against arithmetic intensity I, f(I) = F·I / (I + I½) (roofline-shaped; Williams et al.
  2009), by linear least squares on 1/f = 1/F + (I½/F)·(1/I).
- links: one α and one β for the tier, fitted jointly to every collective with the cost model's own algorithm
  costs (Thakur, Rabenseifner & Gropp 2005, as in `meshplan.cost.comm`): all-reduce 2·log2(p)·α + 2(p-1)/p·n·β,
  all-gather / reduce-scatter (p-1)·α + (p-1)/p·n·β, all-to-all log2(p)·α + (p-1)/p·n·β, send/recv α + n·β;
  non-negative least squares on relative errors (each point weighted by 1/its time).
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.optimize import nnls

from meshplan.errors import PlanError
from meshplan.measure.hardware import (
    CollectivePoint,
    DeviceInfo,
    FlopsCurve,
    GemmPoint,
    HardwareProfile,
    LinkTier,
    device_fingerprint,
)
from meshplan.run.launch import kill_group
from meshplan.specs.gpu import Architecture

ProgressFn = Callable[[int, int], None]
MIN_SECONDS = 0.6  # s of wall-clock window per GEMM/copy item: several scheduler slices, so processes compete
QUICK_MIN_SECONDS = 0.05  # s, for tests


class ProfileFailed(RuntimeError):
    """The microbenchmark launch failed; the message names the rank and the cause."""


def bench_plan(nproc: int, *, quick: bool = False, dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> dict[str, Any]:
    """What to measure: GEMM shapes per dtype, a copy, and collectives per group size and message size."""
    if nproc < 1:
        raise PlanError(f"--nproc {nproc} must be at least 1")
    min_s = QUICK_MIN_SECONDS if quick else MIN_SECONDS
    sizes = [64, 256] if quick else [64, 128, 256, 512, 1024]
    shapes = [(s, s, s) for s in sizes] + ([] if quick else [(64, 1024, 1024), (256, 2048, 512), (1024, 256, 1024)])
    gemm = [{"m": m, "n": n, "k": k, "dtype": d, "min_seconds": min_s} for d in (dtypes[:1] if quick else dtypes)
            for m, n, k in shapes]
    copy = [{"nbytes": (4 if quick else 64) * 2**20, "min_seconds": min_s}]
    groups = sorted({2**i for i in range(1, int(math.log2(nproc)) + 1)} | ({nproc} if nproc > 1 else set()))
    msg = [2**10, 2**16] if quick else [2**10, 2**13, 2**16, 2**19, 2**22]  # bytes per rank
    ops = ["all_reduce", "all_gather", "reduce_scatter", "all_to_all"]
    reps = 5 if quick else 15  # calls per timed collective (the same on every member)
    coll = [{"collective": op, "group_size": g, "nbytes": b, "min_seconds": min_s, "reps": reps}
            for op in ops for g in groups for b in msg]
    if nproc > 1:
        coll += [{"collective": "send_recv", "group_size": 2, "nbytes": b, "min_seconds": min_s, "reps": reps}
                 for b in msg]
        # small all-reduces between GEMMs (~0.1 GFLOP each): the latency training sees when peers are busy
        coll += [{"collective": "loaded_all_reduce", "group_size": nproc, "nbytes": b, "min_seconds": min_s,
                  "reps": 2 * reps, "gemm_size": 384} for b in msg[:2]]
    return {"gemm": gemm, "copy": copy, "collectives": coll, "threads": 1, "timeout_s": 300}


def _launch(plan: dict[str, Any], nproc: int, progress: ProgressFn | None, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshplan-profile-") as tmp:
        out = Path(tmp)
        (out / "plan.json").write_text(json.dumps(plan))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
               f"--nproc-per-node={nproc}", "-m", "meshplan.measure.bench_worker", str(out / "plan.json"), str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env=env)
        started = time.monotonic()
        try:
            while proc.poll() is None:
                if time.monotonic() - started > timeout_s:
                    raise ProfileFailed(f"the profile did not finish within {timeout_s:.0f} s and was stopped")
                if progress is not None and (out / "progress").exists():
                    done, total = (out / "progress").read_text().split() or ("0", "1")
                    progress(int(done), int(total))
                time.sleep(0.2)
        finally:  # an interrupt (Ctrl-C) or a timeout ends the whole launch; nothing is written
            if proc.poll() is None:
                kill_group(proc)
        stderr = proc.stderr.read() if proc.stderr else ""
        raw_path = out / "raw.json"
        if proc.returncode != 0 or not raw_path.exists():
            errors = sorted(out.glob("rank*.error"), key=lambda p: float(p.read_text().split("\n", 1)[0]))
            cause = errors[0].read_text().splitlines()[1] if errors else " | ".join(stderr.strip().splitlines()[-2:])
            raise ProfileFailed(f"the microbenchmarks failed (exit status {proc.returncode}): {cause}")
        return json.loads(raw_path.read_text())


def fit_flops_curve(points: list[GemmPoint]) -> FlopsCurve:
    """F and I½ of f(I) = F·I/(I + I½) by least squares on 1/f = 1/F + (I½/F)/I (relative errors)."""
    if not points:
        raise PlanError("no GEMM timings to fit; run meshplan profile again")
    inv_i = np.array([1.0 / p.intensity for p in points])
    inv_f = np.array([1.0 / p.flops_per_s for p in points])
    # weight by f so that the residuals are relative errors of 1/f
    a = np.stack([np.ones_like(inv_i), inv_i], axis=1) / inv_f[:, None]
    coef, _ = nnls(a, np.ones_like(inv_f))
    if coef[0] <= 0:  # rates fall with intensity (noise): the plateau is the best rate seen
        peak, half = float(max(p.flops_per_s for p in points)), 0.0
    else:
        peak, half = 1.0 / coef[0], coef[1] / coef[0]
    rms = _curve_rms(points, peak, half)
    flat = float(np.median([p.flops_per_s for p in points]))
    if rms > _curve_rms(points, flat, 0.0):
        # no roofline shape in the data (rates that do not rise with intensity, e.g. bf16 emulated on a CPU):
        # a flat rate, the median, describes them better than an extrapolated peak
        peak, half, rms = flat, 0.0, _curve_rms(points, flat, 0.0)
    return FlopsCurve(peak_flops_per_s=peak, half_intensity=half, rms_relative_error=rms)


def _curve_rms(points: list[GemmPoint], peak: float, half: float) -> float:
    fitted = np.array([peak * p.intensity / (p.intensity + half) for p in points])
    return float(np.sqrt(np.mean((fitted / np.array([p.flops_per_s for p in points]) - 1.0) ** 2)))


def _alpha_beta_features(point: CollectivePoint) -> tuple[float, float]:
    """(multiplier of α, multiplier of β = seconds per byte) of one collective in the cost model's algorithms."""
    p, n = float(point.group_size), float(point.nbytes)
    log2p = math.ceil(math.log2(p))
    ring = (p - 1.0) / p * n
    return {
        "all_reduce": (2.0 * log2p, 2.0 * ring),
        "all_gather": (p - 1.0, ring),
        "reduce_scatter": (p - 1.0, ring),
        "all_to_all": (float(log2p), ring),
        "send_recv": (1.0, n),
    }[point.collective]


def fit_link(points: list[CollectivePoint]) -> LinkTier:
    """α (s) and bandwidth (bytes/s) of one tier, jointly over every collective, minimising relative error."""
    if not points:
        raise PlanError("no collective timings to fit; profile with --nproc 2 or more")
    feats = np.array([_alpha_beta_features(p) for p in points])
    t = np.array([p.seconds for p in points])
    (alpha, beta), _ = nnls(feats / t[:, None], np.ones_like(t))
    beta = max(beta, 1e-15)  # s/byte: a bandwidth is finite
    rms = float(np.sqrt(np.mean(((feats @ np.array([alpha, beta])) / t - 1.0) ** 2)))
    return LinkTier(latency_s=float(alpha), bytes_per_s=1.0 / beta, rms_relative_error=rms, num_points=len(points))


def with_loaded_latency(tier: LinkTier, loaded: list[CollectivePoint]) -> LinkTier:
    """α refitted to collectives timed between GEMMs (peers busy computing), β kept from the idle fit: the latency
    of a collective in training includes waiting for peers to be scheduled, which idle microbenchmarks miss."""
    feats = np.array([_alpha_beta_features(p) for p in loaded])
    t = np.array([p.seconds for p in loaded])
    alpha = float(np.median((t - feats[:, 1] / tier.bytes_per_s) / feats[:, 0]))
    return tier.model_copy(update={"latency_s": max(alpha, tier.latency_s), "idle_latency_s": tier.latency_s,
                                   "num_points": tier.num_points + len(loaded)})


def _device(raw: dict[str, Any], nproc: int) -> DeviceInfo:
    cores = os.cpu_count() or 1
    arch: Architecture
    vendor: Literal["nvidia", "other"]
    if raw["backend"] == "nccl":
        major = (raw.get("capability") or [9])[0]
        archs: dict[int, Architecture] = {7: "volta", 8: "ampere", 9: "hopper", 10: "blackwell"}
        arch = archs.get(major, "hopper")
        name, vendor, memory = raw["device"], "nvidia", float(raw["device_memory_bytes"])
    else:
        arch, vendor = "cpu", "other"
        name = _cpu_name()
        memory = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / nproc
    return DeviceInfo(kind="cuda" if raw["backend"] == "nccl" else "cpu", name=name, architecture=arch, vendor=vendor,
                      backend=raw["backend"], num_processes=nproc, host=socket.gethostname(), logical_cores=cores,
                      memory_bytes_per_process=memory, torch_version=raw["torch"])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fit_profile(raw: dict[str, Any], nproc: int) -> HardwareProfile:
    """The profile from the raw timings of the workers."""
    gemm = []
    for r in raw["gemm"]:
        seconds = float(np.median([s for s in r["seconds_per_rank"]]))
        gemm.append(GemmPoint(m=r["m"], n=r["n"], k=r["k"], dtype=r["dtype"], flops_per_s=2.0 * r["m"] * r["n"] * r["k"] / seconds))
    flops = {d: fit_flops_curve([p for p in gemm if p.dtype == d]) for d in sorted({p.dtype for p in gemm})}
    copy = raw["copy"][0]
    bandwidth = 2.0 * copy["nbytes"] / float(np.median(copy["seconds_per_rank"]))  # read + write
    points = [CollectivePoint(collective=c["collective"], group_size=c["group_size"], nbytes=c["nbytes"],
                              seconds=c["seconds"]) for c in raw["collective"] if c["collective"] != "loaded_all_reduce"]
    loaded = [CollectivePoint(collective="all_reduce", group_size=c["group_size"], nbytes=c["nbytes"],
                              seconds=c["seconds"]) for c in raw["collective"] if c["collective"] == "loaded_all_reduce"]
    if points:
        tier = fit_link(points)
        if loaded:
            tier = with_loaded_latency(tier, loaded)
    else:  # one process: nothing to communicate with; a link that is never used
        tier = LinkTier(latency_s=0.0, bytes_per_s=bandwidth, rms_relative_error=0.0, num_points=0)
    device = _device(raw, nproc)
    return HardwareProfile(created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                           fingerprint=device_fingerprint(device), device=device, gemm=gemm, flops=flops,
                           memory_bytes_per_s=bandwidth, collectives=points,
                           links={"intra_node": tier, "inter_node": tier}, executor_dtype="float32")


def measure(nproc: int, *, quick: bool = False, progress: ProgressFn | None = None,
            timeout_s: float = 1800.0) -> HardwareProfile:
    """Run the microbenchmarks on `nproc` processes and fit the profile."""
    from meshplan.run import require_torch

    require_torch()
    if nproc > 64:
        raise PlanError(f"--nproc {nproc} exceeds 64 processes on one machine; use fewer")
    plan = bench_plan(nproc, quick=quick)
    raw = _launch(plan, nproc, progress, timeout_s)
    return fit_profile(raw, nproc)
