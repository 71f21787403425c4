"""`GpuSpec`: datasheet figures of one accelerator, each with its source."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from meshplan.errors import PlanError
from meshplan.specs.base import Frozen

Dtype = Literal["fp32", "tf32", "bf16", "fp16", "fp8", "fp4"]
Architecture = Literal["volta", "ampere", "ada", "hopper", "blackwell", "cdna3", "cpu"]
"""`cpu`: the processes of one host, described by a measured hardware profile (`meshplan profile`)."""


class GpuSpec(Frozen):
    """One GPU model. Bandwidths are per GPU and per direction; FLOP/s are dense (no sparsity)."""

    name: str
    """Canonical catalog name, e.g. `H100-SXM`."""
    aliases: tuple[str, ...] = ()
    """Other names accepted on the command line, e.g. `H100`."""
    vendor: Literal["nvidia", "amd", "other"]
    """Maker."""
    architecture: Architecture
    """GPU generation; fitted efficiency factors are kept per generation."""
    peak_flops: dict[Dtype, float]
    """Peak dense tensor-core (or matrix-core) FLOP/s per dtype; a dtype missing here is not supported."""
    hbm_bytes: float = Field(gt=0)
    """Device memory capacity in bytes."""
    hbm_bytes_per_s: float = Field(gt=0)
    """Device memory bandwidth in bytes/s."""
    intra_node_bytes_per_s: float = Field(gt=0)
    """Scale-up link bandwidth (NVLink, xGMI or PCIe) per GPU, per direction, in bytes/s."""
    intra_node_link: str
    """What the scale-up link is, e.g. `NVLink 4 (18 links)`."""
    default_gpus_per_node: int = Field(gt=0)
    """GPUs sharing one scale-up domain in the usual system (8 for DGX, 72 for GB200 NVL72)."""
    default_inter_node_bytes_per_s: float = Field(gt=0)
    """Scale-out network bandwidth per GPU, per direction, in bytes/s, of the usual system."""
    default_system: str
    """The system the defaults describe, e.g. `DGX H100: 8x ConnectX-7 400 Gb/s`."""
    sources: dict[str, str]
    """Where each figure comes from (datasheet, whitepaper), keyed by field name."""

    def peak(self, dtype: str) -> float:
        """Peak dense FLOP/s for `dtype`; a clear error when the GPU lacks it."""
        if dtype not in self.peak_flops:
            have = ", ".join(self.peak_flops)
            raise PlanError(f"GPU {self.name} has no {dtype} tensor throughput (it has {have}); choose another --precision")
        return self.peak_flops[dtype]  # type: ignore[index]
