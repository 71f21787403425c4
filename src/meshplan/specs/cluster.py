"""`ClusterSpec`: how many GPUs of which type, and the two link tiers between them."""

from __future__ import annotations

from pydantic import Field, model_validator

from meshplan.errors import PlanError
from meshplan.specs.base import Frozen
from meshplan.specs.gpu import GpuSpec

# NCCL-level start-up latency of one collective step (α in the α-β model; Thakur et al. 2005).
DEFAULT_INTRA_NODE_LATENCY_S = 5e-6  # s, NVLink hop incl. kernel launch (nccl-tests small-message latency)
DEFAULT_INTER_NODE_LATENCY_S = 15e-6  # s, InfiniBand/RoCE hop incl. proxy thread (nccl-tests small messages)


class ClusterSpec(Frozen):
    """GPUs of one type, `gpus_per_node` to a scale-up (NVLink) domain, the domains joined by a network."""

    gpu: GpuSpec
    """The GPU every rank runs on."""
    num_gpus: int = Field(gt=0)
    """GPUs in the job."""
    gpus_per_node: int = Field(gt=0)
    """GPUs in one scale-up domain (a node, or an NVL72 rack)."""
    intra_node_bytes_per_s: float = Field(gt=0)
    """Scale-up bandwidth per GPU, per direction, bytes/s."""
    inter_node_bytes_per_s: float = Field(gt=0)
    """Scale-out bandwidth per GPU, per direction, bytes/s."""
    intra_node_latency_s: float = Field(default=DEFAULT_INTRA_NODE_LATENCY_S, ge=0)
    """Latency of one step of a collective inside the scale-up domain, seconds."""
    inter_node_latency_s: float = Field(default=DEFAULT_INTER_NODE_LATENCY_S, ge=0)
    """Latency of one step of a collective across the network, seconds."""
    allow_cross_node_tp: bool = False
    """Let tensor parallelism span nodes (its collectives then run over the network)."""

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        if self.num_gpus > self.gpus_per_node and self.num_gpus % self.gpus_per_node:
            raise PlanError(
                f"num_gpus={self.num_gpus} is not a whole number of nodes of gpus_per_node={self.gpus_per_node}; "
                f"use a multiple of {self.gpus_per_node} or change --gpus-per-node"
            )
        return self

    @property
    def num_nodes(self) -> int:
        return max(1, self.num_gpus // self.gpus_per_node)


def make_cluster(
    gpu: GpuSpec,
    num_gpus: int,
    *,
    gpus_per_node: int | None = None,
    intra_node_bytes_per_s: float | None = None,
    inter_node_bytes_per_s: float | None = None,
    intra_node_latency_s: float | None = None,
    inter_node_latency_s: float | None = None,
    allow_cross_node_tp: bool = False,
) -> ClusterSpec:
    """A cluster with the GPU's usual system as defaults; every figure overridable."""
    if num_gpus <= 0:
        raise PlanError(f"num_gpus={num_gpus} must be a positive integer")
    per_node = gpus_per_node if gpus_per_node is not None else min(gpu.default_gpus_per_node, num_gpus)
    return ClusterSpec(
        gpu=gpu,
        num_gpus=num_gpus,
        gpus_per_node=per_node,
        intra_node_bytes_per_s=intra_node_bytes_per_s or gpu.intra_node_bytes_per_s,
        inter_node_bytes_per_s=inter_node_bytes_per_s or gpu.default_inter_node_bytes_per_s,
        intra_node_latency_s=DEFAULT_INTRA_NODE_LATENCY_S if intra_node_latency_s is None else intra_node_latency_s,
        inter_node_latency_s=DEFAULT_INTER_NODE_LATENCY_S if inter_node_latency_s is None else inter_node_latency_s,
        allow_cross_node_tp=allow_cross_node_tp,
    )
