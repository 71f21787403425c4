"""`Deployment`: how one model is laid out for serving, and `DeploymentTable`, many of them as columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from meshplan.errors import PlanError
from meshplan.specs.base import Frozen
from meshplan.specs.model import ModelSpec

WeightPrecision = Literal["fp16", "bf16", "fp8", "fp4"]
KvDtype = Literal["fp16", "bf16", "fp8"]

# Bytes per stored value. fp4: NVFP4 keeps 4-bit values plus one fp8 scale per 16 values (NVIDIA Blackwell
# NVFP4 format): 0.5 + 1/16 bytes.
BYTES_PER_VALUE = {"fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "fp4": 0.5 + 1.0 / 16.0}  # bytes


class Deployment(Frozen):
    """One aggregated deployment: `replicas` identical engine instances of tp·pp·attn_dp GPUs each."""

    tp: int = Field(default=1, gt=0)
    """Tensor parallelism of one instance (for MoE with attention DP: the attention TP)."""
    pp: int = Field(default=1, gt=0)
    """Pipeline stages of one instance."""
    ep: int = Field(default=1, gt=0)
    """Expert parallelism of the MoE layers (divides tp·attn_dp; 1 for dense models)."""
    attn_dp: int = Field(default=1, gt=0)
    """Attention data-parallel ranks inside one instance (MoE: experts shared, attention replicated)."""
    replicas: int = Field(default=1, gt=0)
    """Independent engine instances."""
    precision: WeightPrecision = "bf16"
    """Weight (and GEMM) precision."""
    kv_dtype: KvDtype = "bf16"
    """KV-cache dtype."""
    max_batch: int = Field(default=512, gt=0)
    """Most sequences in flight per instance (vLLM --max-num-seqs, TensorRT-LLM max_batch_size)."""
    chunk_tokens: int = Field(default=8192, gt=0)
    """Most tokens per scheduler iteration: the chunked-prefill budget (vLLM --max-num-batched-tokens)."""

    @model_validator(mode="after")
    def _check(self) -> Deployment:
        if (self.tp * self.attn_dp) % self.ep:
            raise PlanError(f"ep={self.ep} must divide tp*attn_dp={self.tp * self.attn_dp} (the GPUs of a stage); "
                            "choose ep among its divisors")
        return self

    @property
    def gpus_per_instance(self) -> int:
        return self.tp * self.pp * self.attn_dp

    @property
    def num_gpus(self) -> int:
        return self.gpus_per_instance * self.replicas

    def label(self) -> str:
        parts = [f"tp{self.tp}"]
        if self.pp > 1:
            parts.append(f"pp{self.pp}")
        if self.ep > 1:
            parts.append(f"ep{self.ep}")
        if self.attn_dp > 1:
            parts.append(f"adp{self.attn_dp}")
        parts.append(f"x{self.replicas}")
        parts.append(self.precision if self.kv_dtype == self.precision else f"{self.precision}/kv{self.kv_dtype}")
        parts.append(f"b{self.max_batch}")
        return " ".join(parts)


def check_deployment(dep: Deployment, model: ModelSpec) -> None:
    """Reject a deployment the model's shape cannot take, with the reason and the fix."""
    if model.num_heads % dep.tp:
        raise PlanError(f"tp={dep.tp} does not divide the {model.num_heads} attention heads of {model.name}; "
                        "choose a divisor")
    if dep.pp > model.num_layers:
        raise PlanError(f"pp={dep.pp} exceeds the {model.num_layers} layers of {model.name}")
    if not model.is_moe and (dep.ep > 1 or dep.attn_dp > 1):
        raise PlanError(f"ep/attn_dp > 1 need an MoE model; {model.name} is dense (use replicas instead)")
    if model.is_moe and model.num_experts % dep.ep:
        raise PlanError(f"ep={dep.ep} does not divide the {model.num_experts} experts of {model.name}")


@dataclass(frozen=True)
class DeploymentTable:
    """Deployments as numpy columns (one row each), so that the cost model prices thousands at once."""

    tp: np.ndarray
    pp: np.ndarray
    ep: np.ndarray
    attn_dp: np.ndarray
    replicas: np.ndarray
    weight_bytes: np.ndarray
    """Bytes per weight value."""
    kv_bytes: np.ndarray
    """Bytes per KV-cache value."""
    max_batch: np.ndarray
    chunk_tokens: np.ndarray
    rows: tuple[Deployment, ...]

    @classmethod
    def of(cls, deployments: list[Deployment]) -> DeploymentTable:
        def col(name: str) -> np.ndarray:
            return np.array([getattr(d, name) for d in deployments], dtype=np.float64)

        return cls(tp=col("tp"), pp=col("pp"), ep=col("ep"), attn_dp=col("attn_dp"), replicas=col("replicas"),
                   weight_bytes=np.array([BYTES_PER_VALUE[d.precision] for d in deployments]),
                   kv_bytes=np.array([BYTES_PER_VALUE[d.kv_dtype] for d in deployments]),
                   max_batch=col("max_batch"), chunk_tokens=col("chunk_tokens"), rows=tuple(deployments))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def gpus_per_instance(self) -> np.ndarray:
        return self.tp * self.pp * self.attn_dp
