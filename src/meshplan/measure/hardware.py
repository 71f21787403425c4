"""`HardwareProfile`: what `meshplan profile` measured on the local devices, and the specs the planner builds from it.

The third layer of hardware knowledge (design.md): achieved GEMM FLOP/s as a curve over arithmetic intensity,
achieved memory bandwidth, and α-β (latency + bytes / bandwidth) per link tier fitted to collective
microbenchmarks — all measured with every process of the job running at once, so they are what N concurrent
processes really get. A profile is a versioned JSON file, written atomically (temporary file + `os.replace`), and
read back with a clear error when it is corrupt, truncated, foreign or from a newer meshplan.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from meshplan.cost.efficiency import HBM_EFFICIENCY, Efficiency
from meshplan.cost.memory import ACT_BYTES, GRAD_BYTES, OPTIMIZER_BYTES, WEIGHT_BYTES
from meshplan.errors import PlanError, first_error
from meshplan.specs.base import Frozen
from meshplan.specs.cluster import ClusterSpec
from meshplan.specs.gpu import Architecture, GpuSpec

PROFILE_FORMAT = "meshplan-hardware-profile"
PROFILE_SCHEMA_VERSION = 1
ExecutorDtype = Literal["float32", "bfloat16"]
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}  # bytes per element
# Bytes per parameter the executor keeps for weights + gradients + AdamW m and v, by training dtype
# (meshplan.run trains in one dtype, no separate master copy): float32 4 + 4 + 8, bfloat16 2 + 2 + 4.
EXECUTOR_STATE_BYTES = {"float32": 16, "bfloat16": 8}  # bytes/param
MODEL_STATE_BYTES = WEIGHT_BYTES + GRAD_BYTES + OPTIMIZER_BYTES  # bytes/param of the cost model (18, mixed precision)


class DeviceInfo(Frozen):
    """The devices a profile describes."""

    kind: Literal["cpu", "cuda"]
    """cpu: processes of one host (gloo); cuda: GPUs (NCCL)."""
    name: str
    """CPU model or GPU name as the system reports it."""
    architecture: Architecture
    vendor: Literal["nvidia", "amd", "other"]
    backend: Literal["gloo", "nccl"]
    num_processes: int = Field(gt=0)
    """Processes that ran the microbenchmarks at once (one per device)."""
    host: str
    logical_cores: int = Field(gt=0)
    memory_bytes_per_process: float = Field(gt=0)
    """Device memory per process: GPU memory, or the host's RAM divided among the processes."""
    torch_version: str


class GemmPoint(Frozen):
    """One GEMM shape, (m×k)·(k×n), timed on every process at once; the median process's rate."""

    m: int
    n: int
    k: int
    dtype: ExecutorDtype
    flops_per_s: float = Field(gt=0)

    @property
    def intensity(self) -> float:
        """Arithmetic intensity 2mnk / (bytes of A, B and C), FLOP/byte (roofline; Williams et al. 2009)."""
        return 2.0 * self.m * self.n * self.k / (DTYPE_BYTES[self.dtype] * (self.m * self.k + self.k * self.n + self.m * self.n))


class FlopsCurve(Frozen):
    """Achieved FLOP/s per process against arithmetic intensity I: peak · I / (I + half_intensity)."""

    peak_flops_per_s: float = Field(gt=0)
    half_intensity: float = Field(ge=0)
    """FLOP/byte at which a GEMM reaches half the peak."""
    rms_relative_error: float = Field(ge=0)
    """Root-mean-square relative error of the curve over the measured shapes."""


class CollectivePoint(Frozen):
    """One collective, group size and message size: median seconds over repetitions, slowest rank."""

    collective: Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv"]
    """The collective; all_reduce points timed between GEMMs are kept apart as the loaded latency."""
    group_size: int = Field(ge=2)
    nbytes: int = Field(gt=0)
    """Bytes per rank (the buffer each rank contributes)."""
    seconds: float = Field(gt=0)


class LinkTier(Frozen):
    """α-β of one link tier, fitted jointly to every collective with the cost model's own algorithm costs."""

    latency_s: float = Field(ge=0)
    """α in training conditions: collectives timed while the peers compute (the idle fit's α when larger)."""
    bytes_per_s: float = Field(gt=0)
    idle_latency_s: float | None = Field(default=None, ge=0)
    """α of the idle microbenchmarks (every rank waiting on the collective)."""
    rms_relative_error: float = Field(ge=0)
    """Root-mean-square relative error of the α-β model over the measured points."""
    num_points: int = Field(ge=0)


class HardwareProfile(Frozen):
    """A measured hardware profile (`meshplan profile --out hw.json`)."""

    format: Literal["meshplan-hardware-profile"] = "meshplan-hardware-profile"
    schema_version: int = PROFILE_SCHEMA_VERSION
    created_at: str
    """UTC time of the measurement, ISO 8601."""
    fingerprint: str
    """Hash of the device description: measurements of the same hardware and software share it."""
    device: DeviceInfo
    executor_dtype: ExecutorDtype = "float32"
    """The dtype meshplan's executor trains in on these devices (float32 on CPU)."""
    gemm: list[GemmPoint]
    flops: dict[ExecutorDtype, FlopsCurve]
    """Achieved-FLOP/s curve per dtype."""
    memory_bytes_per_s: float = Field(gt=0)
    """Achieved memory bandwidth per process (copy of a large tensor, read + write), all processes at once."""
    collectives: list[CollectivePoint]
    links: dict[Literal["intra_node", "inter_node"], LinkTier]
    """α-β per link tier; on one host both tiers are the host's (there is no network)."""
    efficiency: Efficiency | None = None
    """Factors fitted by `meshplan calibrate` (None: the profile as measured)."""
    calibration: dict[str, Any] | None = None
    """What the calibration fitted: values, standard errors, runs used, error before and after."""

    def curve(self) -> FlopsCurve:
        if self.executor_dtype not in self.flops:
            raise PlanError(f"the hardware profile has no {self.executor_dtype} GEMM curve; run meshplan profile again")
        return self.flops[self.executor_dtype]


def device_fingerprint(device: DeviceInfo) -> str:
    """16 hex digits of SHA-256 over the device description."""
    return hashlib.sha256(device.model_dump_json().encode()).hexdigest()[:16]


def load_profile(path: Path | str) -> HardwareProfile:
    """Read a profile; a missing, corrupt, truncated, foreign or newer file is a one-line `PlanError`."""
    path = Path(path)
    fix = "run `meshplan profile --out FILE` to measure one"
    if not path.is_file():
        raise PlanError(f"hardware profile {str(path)!r} does not exist; {fix}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"hardware profile {str(path)!r} is not valid JSON (corrupt or truncated: {exc}); {fix}") from None
    if not isinstance(raw, dict) or raw.get("format") != PROFILE_FORMAT:
        raise PlanError(f"{str(path)!r} is not a meshplan hardware profile (no \"format\": \"{PROFILE_FORMAT}\"); "
                        f"pass the file `meshplan profile --out` wrote, or {fix}")
    version = raw.get("schema_version")
    if not isinstance(version, int) or version > PROFILE_SCHEMA_VERSION:
        raise PlanError(f"hardware profile {str(path)!r} has schema version {version!r}, newer than this meshplan reads "
                        f"({PROFILE_SCHEMA_VERSION}); upgrade meshplan or measure again with this one")
    try:
        profile = HardwareProfile.model_validate(raw)
    except ValidationError as exc:
        where, msg, _ = first_error(exc)
        raise PlanError(f"hardware profile {str(path)!r} is damaged: {where}: {msg}; {fix}") from None
    if device_fingerprint(profile.device) != profile.fingerprint:
        raise PlanError(f"hardware profile {str(path)!r} has a fingerprint that does not match its device description "
                        f"(edited or damaged); {fix}")
    return profile


def write_profile(profile: HardwareProfile, path: Path | str) -> None:
    """Write atomically (see `write_atomic`)."""
    write_atomic(profile.model_dump_json(indent=2), path)


def write_atomic(text: str, path: Path | str) -> None:
    """A temporary file beside the target, then `os.replace`: an interruption leaves the old file (or none), never
    half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def local_gpu(profile: HardwareProfile) -> GpuSpec:
    """A GpuSpec of the profiled device, so the planner can plan for it.

    The cost model counts activations and element-wise traffic in 2-byte elements (bf16); the executor trains in
    `executor_dtype`, so bandwidths are stated in the cost model's units: measured bytes/s × 2 / element bytes.
    The dense FLOP/s under every precision name is the executor dtype's measured peak.
    """
    d = profile.device
    curve = profile.curve()
    unit = ACT_BYTES / DTYPE_BYTES[profile.executor_dtype]
    link = profile.links["intra_node"]
    peak = curve.peak_flops_per_s
    how = f"meshplan profile {profile.created_at}, {d.num_processes} processes at once"
    return GpuSpec(
        name=f"{d.kind}:{d.name}" if d.kind == "cuda" else f"local-cpu/{d.num_processes}",
        vendor=d.vendor, architecture=d.architecture,
        peak_flops={"fp32": peak, "tf32": peak, "bf16": peak, "fp16": peak},
        hbm_bytes=d.memory_bytes_per_process,
        # the cost model applies HBM_EFFICIENCY to this figure; the profile's bandwidth is already achieved
        hbm_bytes_per_s=profile.memory_bytes_per_s * unit / HBM_EFFICIENCY,
        intra_node_bytes_per_s=link.bytes_per_s * unit, intra_node_link=f"{d.backend} on {d.host}",
        default_gpus_per_node=d.num_processes,
        default_inter_node_bytes_per_s=profile.links["inter_node"].bytes_per_s * unit,
        default_system=f"{d.num_processes} x {d.name} ({d.backend})",
        sources={"peak_flops": f"{profile.executor_dtype} GEMM curve plateau, {how}",
                 "hbm_bytes_per_s": f"tensor copy, {how}",
                 "links": f"α-β fit to {link.num_points} collective timings ({d.backend}), {how}"},
    )


def local_cluster(profile: HardwareProfile, num_devices: int | None = None) -> ClusterSpec:
    """The profiled devices as a cluster: one scale-up domain of `num_devices` (default: the profiled count)."""
    n = num_devices or profile.device.num_processes
    gpu = local_gpu(profile)
    intra, inter = profile.links["intra_node"], profile.links["inter_node"]
    unit = ACT_BYTES / DTYPE_BYTES[profile.executor_dtype]
    per_node = n if profile.device.kind == "cpu" else min(n, profile.device.num_processes)  # a host is one domain
    return ClusterSpec(gpu=gpu, num_gpus=n, gpus_per_node=per_node,
                       intra_node_bytes_per_s=intra.bytes_per_s * unit, inter_node_bytes_per_s=inter.bytes_per_s * unit,
                       intra_node_latency_s=intra.latency_s, inter_node_latency_s=inter.latency_s)


def profile_efficiency(profile: HardwareProfile) -> Efficiency:
    """The factors the cost model uses with this profile: calibrated ones when present, else the measured ones
    (GEMM factor 1 on the measured plateau, ridge from the measured curve, links at their achieved rates)."""
    if profile.efficiency is not None:
        return profile.efficiency
    gpu = local_gpu(profile)
    curve = profile.curve()
    d = profile.device
    ridge = gpu.peak("bf16") / gpu.hbm_bytes_per_s  # the cost model's ridge point, FLOP/byte
    # the cost model's intensities count 2-byte elements: the measured half-intensity x element bytes / 2
    half = curve.half_intensity * DTYPE_BYTES[profile.executor_dtype] / ACT_BYTES
    return Efficiency(
        gemm={gpu.architecture: 1.0}, fp8_ratio=1.0, ridge_factor=min(half / ridge, 4.0),
        intra_node_bandwidth=1.0, inter_node_bandwidth=1.0, fallback_architecture=gpu.architecture,
        source=f"measured profile {profile.fingerprint}", layer="measured profile",
        # N processes on fewer cores: while a pipeline stage idles, the others get its share of the cores
        pp_bubble_hidden=max(0.0, 1.0 - d.logical_cores / d.num_processes) if d.kind == "cpu" else 0.0,
        dp_overlap=0.0 if d.kind == "cpu" else 1.0,  # gloo's collectives run on the computing cores
        memory_state_scale=EXECUTOR_STATE_BYTES[profile.executor_dtype] / MODEL_STATE_BYTES,
        memory_activation_scale=DTYPE_BYTES[profile.executor_dtype] / ACT_BYTES,
        memory_overhead_bytes=0.0 if profile.device.kind == "cpu" else None,
    )
