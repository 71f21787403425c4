"""Serving efficiency factors: the few fitted numbers that turn datasheet peaks into achieved serving speeds.

Layer 2 of hardware knowledge for serving (`meshplan/data/efficiency/serving.json`, written by
`benchmarks/fit_serving.py` from the published serving runs). Every factor is physically meaningful: an
achieved fraction of a datasheet figure, or a fixed time per scheduler iteration of an engine.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from pydantic import Field

from meshplan.specs.base import Frozen
from meshplan.specs.gpu import GpuSpec


class ServingEfficiency(Frozen):
    """Achieved fractions of datasheet figures while serving, and engine overheads."""

    compute: dict[str, float]
    """Achieved fraction of peak tensor FLOP/s in prefill GEMMs, per GPU architecture."""
    hbm: float = Field(gt=0, le=1)
    """Achieved fraction of datasheet HBM bandwidth when decode streams weights and KV cache."""
    low_precision_ratio: float = Field(default=0.8, gt=0, le=1)
    """Achieved fraction of the fp8/fp4 peak relative to the bf16 fraction (scaling, casts, smaller tiles)."""
    attention_ratio: float = Field(default=0.7, gt=0, le=1)
    """Fused attention kernels' efficiency relative to GEMMs (FlashAttention-2 reaches 50-73% of A100 peak
    forward; Dao 2023, §4.1). Not fitted."""
    iteration_overhead_s: dict[str, float]
    """Fixed time per scheduler iteration per engine (CPU scheduling, sampling, launches), seconds."""
    sequence_overhead_s: float = Field(default=0.0, ge=0)
    """Time per sequence in flight per iteration (per-request scheduling, sampling, detokenisation), seconds."""
    request_overhead_s: dict[str, float] = Field(default_factory=dict)
    """Fixed part of TTFT per engine: API server, tokenisation, admission into the scheduler, seconds."""
    lockstep_share: dict[str, float] = Field(default_factory=dict)
    """Per engine (its benchmark client): share of closed-loop restarts that reach the scheduler together with
    others (fixed-length requests admitted in one iteration finish in one iteration; a client that adds no
    jitter to the restart sends them back together, and they share one prefill iteration), 0-1. Fitted."""
    allreduce_step_latency_s: dict[str, float] = Field(default_factory=dict)
    """Per engine that runs its tensor-parallel all-reduces as plain NCCL collectives (no one-shot custom kernel):
    seconds per step of NCCL's tree, which costs 2·log2(k) steps for k GPUs (Thakur et al. 2005, §4.4). Engines
    not listed use their one-shot kernel (2α of the cluster's links). Fitted for the unnamed engine of
    splitwise-sim's profiles, whose decode steps grow with TP as 2·log2(k) steps of ~20-30 us would."""
    memory_fraction: float = Field(default=0.9, gt=0, le=1)
    """Fraction of the memory left after weights, activations and runtime that the KV cache takes (TensorRT-LLM
    kv_cache_free_gpu_mem_fraction 0.9; vLLM --gpu-memory-utilization 0.9 is close). Not fitted."""
    runtime_bytes: float = Field(default=3e9, ge=0)
    """Per-GPU memory outside weights and KV cache: CUDA context, cuBLAS/NCCL workspaces, CUDA graphs (bytes).
    Not fitted."""
    fallback_architecture: str = "hopper"
    """Architecture whose compute factor stands in for one with no measured runs."""
    fallback_engine: str = "trtllm"
    """Engine whose overhead stands in for an unknown one."""
    source: str = "defaults"
    """Where the numbers come from."""

    def compute_for(self, gpu: GpuSpec) -> tuple[float, str]:
        if gpu.architecture in self.compute:
            return self.compute[gpu.architecture], f"fitted for {gpu.architecture} ({self.source})"
        return (self.compute[self.fallback_architecture],
                f"assumed: no measured {gpu.architecture} runs, {self.fallback_architecture} factor used")

    def overhead_for(self, engine: str) -> float:
        return self.iteration_overhead_s.get(engine, self.iteration_overhead_s[self.fallback_engine])

    def lockstep_for(self, engine: str) -> float:
        return self.lockstep_share.get(engine, self.lockstep_share.get(self.fallback_engine, 0.0))

    def allreduce_step_latency_for(self, engine: str) -> float | None:
        return self.allreduce_step_latency_s.get(engine)

    def request_overhead_for(self, engine: str) -> float:
        return self.request_overhead_s.get(engine, self.request_overhead_s.get(self.fallback_engine, 0.0))


@lru_cache(maxsize=1)
def default_serving_efficiency() -> ServingEfficiency:
    """The factors shipped with meshplan (fitted to the published serving runs)."""
    path = resources.files("meshplan") / "data" / "efficiency" / "serving.json"
    return ServingEfficiency.model_validate_json(path.read_text(encoding="utf-8"))
