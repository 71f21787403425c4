"""The logical device mesh of `meshplan shard` and the prices of its collectives, one mesh axis at a time.

A mesh `2x4` has axis 0 of size 2 and axis 1 of size 4; the last axis is innermost (its members are
neighbouring ranks, stride 1), so it is the one that stays inside an NVLink domain. Each collective along an
axis is priced with the α-β model of `meshplan.cost.comm` (hierarchical over the two link tiers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from meshplan.cost.comm import Links, all_gather_time, all_reduce_time, all_to_all_time
from meshplan.cost.efficiency import HBM_EFFICIENCY, Efficiency, default_efficiency
from meshplan.errors import PlanError
from meshplan.specs.cluster import make_cluster
from meshplan.specs.gpu import GpuSpec

MAX_MESH_AXES = 2  # Alpa's logical meshes are 2D; more axes multiply the strategies of every operator


def parse_mesh(text: str) -> tuple[int, ...]:
    """`4` -> (4,), `2x4` -> (2, 4); a clear error for anything else."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise PlanError(f"--mesh {text!r} is not a mesh shape; write the axis sizes like 8 or 2x4") from None
    if not shape or any(s <= 0 for s in shape):
        raise PlanError(f"--mesh {text!r} has an axis of size 0 or less; every axis size must be positive, e.g. 2x4")
    if len(shape) > MAX_MESH_AXES:
        raise PlanError(f"--mesh {text!r} has {len(shape)} axes; meshplan shard takes a 1D or 2D mesh such as 2x4")
    return shape


@dataclass(frozen=True)
class Device:
    """What one device achieves: matmul FLOP/s, element-wise memory bandwidth, memory capacity."""

    flops_per_s: float
    hbm_bytes_per_s: float
    hbm_bytes: float

    @classmethod
    def of(cls, gpu: GpuSpec, dtype: str, eff: Efficiency) -> Device:
        factor, _ = eff.gemm_for(gpu)
        return cls(gpu.peak(dtype) * factor, gpu.hbm_bytes_per_s * HBM_EFFICIENCY, gpu.hbm_bytes)

    def op_time(self, flops: float, nbytes: float) -> float:
        """Roofline: the slower of compute and memory traffic (Williams et al. 2009)."""
        return max(flops / self.flops_per_s, nbytes / self.hbm_bytes_per_s)


@dataclass(frozen=True)
class LogicalMesh:
    """Axis sizes, the links under them, and the device at each point."""

    shape: tuple[int, ...]
    links: Links
    device: Device

    @classmethod
    def build(cls, shape: tuple[int, ...], gpu: GpuSpec, *, dtype: str = "bf16", gpus_per_node: int | None = None,
              eff: Efficiency | None = None) -> LogicalMesh:
        eff = eff or default_efficiency()
        cluster = make_cluster(gpu, math.prod(shape), gpus_per_node=gpus_per_node)
        return cls(shape, Links.of(cluster, eff), Device.of(gpu, dtype, eff))

    @property
    def num_devices(self) -> int:
        return math.prod(self.shape)

    def stride(self, axis: int) -> int:
        return math.prod(self.shape[axis + 1:])

    def all_reduce(self, nbytes: float, axis: int) -> float:
        return float(all_reduce_time(np.asarray(nbytes), np.asarray(self.shape[axis]), np.asarray(self.stride(axis)), self.links))

    def all_gather(self, nbytes: float, axis: int) -> float:
        """`nbytes` is the gathered (output) buffer per rank."""
        return float(all_gather_time(np.asarray(nbytes), np.asarray(self.shape[axis]), np.asarray(self.stride(axis)), self.links))

    def all_to_all(self, nbytes: float, axis: int) -> float:
        return float(all_to_all_time(np.asarray(nbytes), np.asarray(self.shape[axis]), np.asarray(self.stride(axis)), self.links))

    def submesh(self, shape: tuple[int, ...]) -> LogicalMesh:
        """The same devices and links on a smaller mesh (a pipeline stage's share)."""
        return LogicalMesh(shape, self.links, self.device)
