"""Efficiency factors: the few fitted numbers that turn datasheet peaks into achieved speeds.

Layer 1 of hardware knowledge is the datasheet (the GPU catalog); this is layer 2, fitted to measured runs
(`meshplan/data/efficiency/training.json`, produced by `benchmarks/fit_training.py` from the published runs
in `meshplan/data/published/`). Every factor is dimensionless and physically meaningful.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Literal

from pydantic import Field

from meshplan.specs.base import Frozen
from meshplan.specs.gpu import GpuSpec

# Achieved fraction of datasheet HBM bandwidth for streaming element-wise kernels (STREAM-like copy/scale;
# e.g. ~0.8-0.9 of peak for large vectors on A100/H100 in NVIDIA's bandwidthTest). Not fitted.
HBM_EFFICIENCY = 0.85  # dimensionless


class Efficiency(Frozen):
    """Achieved fractions of the datasheet figures."""

    gemm: dict[str, float]
    """Achieved fraction of peak tensor FLOP/s for large bf16/fp16 GEMMs, per GPU architecture."""
    gemm_uncertainty: dict[str, float] = Field(default_factory=dict)
    """One standard error of each `gemm` factor, from the fit."""
    fp8_ratio: float = Field(gt=0, le=1)
    """Achieved fraction of the fp8 peak divided by the achieved fraction of the bf16 peak (casts, scaling)."""
    ridge_factor: float = Field(default=0.25, ge=0)
    """GEMM efficiency falls to half when its arithmetic intensity equals ridge_factor x the machine's ridge point.
    Not fitted (the published runs are all large GEMMs and cannot inform it): 0.25 matches cuBLAS bf16 sweeps,
    where square GEMMs of 1024 (intensity ≈ 2x ridge... 341 FLOP/B on A100) reach ~90% of the large-GEMM rate."""
    attention_ratio: float = Field(default=0.7, gt=0, le=1)
    """Efficiency of the fused attention kernels relative to large GEMMs (FlashAttention-2 reaches 50-73% of A100
    peak forward against ~80-88% for cuBLAS GEMMs; Dao 2023, §4.1)."""
    tp_overlap: float = Field(default=0.0, ge=0, le=1)
    """Fraction of tensor-parallel communication hidden behind GEMMs when the workload enables tp_comm_overlap."""
    intra_node_bandwidth: float = Field(default=0.8, gt=0, le=1)
    """Achieved fraction of scale-up (NVLink) bandwidth in collectives: NCCL bus bandwidth / link bandwidth, ~0.8
    in nccl-tests all_reduce_perf on DGX A100 (~240 of 300 GB/s) and DGX H100 (~360 of 450 GB/s, without NVLS).
    Measured, not fitted: the published runs cannot separate it from the GEMM efficiency."""
    inter_node_bandwidth: float = Field(default=0.9, gt=0, le=1)
    """Achieved fraction of per-GPU network bandwidth in collectives: ~0.9 of InfiniBand line rate in nccl-tests
    across nodes (e.g. ~22-23 of 25 GB/s per HDR NIC). Measured, not fitted."""
    fallback_architecture: str = "hopper"
    """Architecture whose `gemm` factor stands in for one with no measured runs."""
    source: str = "defaults"
    """Where these numbers come from (the fit that produced them, or 'defaults')."""
    layer: Literal["datasheet", "fitted efficiency", "measured profile"] = "fitted efficiency"
    """The layer of hardware knowledge these factors belong to: datasheet peaks with default factors, factors
    fitted to measured runs, or a measured hardware profile (`meshplan profile`, GPU spec built from it)."""
    pp_bubble_hidden: float = Field(default=0.0, ge=0, le=1)
    """Fraction of the pipeline bubble that costs nothing: 0 on GPUs (an idle stage idles its device); on processes
    sharing too few CPU cores the idle stages' cores serve the busy ones. Set by a hardware profile, calibrated."""
    dp_overlap: float = Field(default=1.0, ge=0, le=1)
    """Fraction of the compute window that hides data-parallel communication (1: separate NCCL streams; 0: gloo
    on the cores that compute)."""
    memory_state_scale: float = Field(default=1.0, gt=0)
    """Measured / modelled bytes of weights, gradients and optimizer states (1 for the 2+4+12 B/param mixed-precision
    layout; 16/18 for float32 training: 4+4+8 B/param). Set by a hardware profile, refined by calibration."""
    memory_activation_scale: float = Field(default=1.0, gt=0)
    """Measured / modelled bytes of what is held in the compute dtype: activations, logits and ZeRO-3's unsharded
    weights and gradients (2 for float32 against the model's 2 B)."""
    memory_overhead_bytes: float | None = Field(default=None, ge=0)
    """Fixed bytes per device in place of the CUDA-context allowance (0 where memory is measured tensor by tensor)."""

    def gemm_for(self, gpu: GpuSpec) -> tuple[float, str]:
        """The GEMM factor for `gpu` and where it comes from."""
        if gpu.architecture in self.gemm:
            err = self.gemm_uncertainty.get(gpu.architecture)
            spread = f" ± {err:.3f}" if err is not None else ""
            return self.gemm[gpu.architecture], f"{spread} for {gpu.architecture}, {self.source}"
        fallback = self.gemm[self.fallback_architecture]
        return fallback, f"assumed: no measured {gpu.architecture} runs, {self.fallback_architecture} factor used"


@lru_cache(maxsize=1)
def default_efficiency() -> Efficiency:
    """The factors shipped with meshplan (fitted to the published training runs)."""
    path = resources.files("meshplan") / "data" / "efficiency" / "training.json"
    return Efficiency.model_validate_json(path.read_text(encoding="utf-8"))
