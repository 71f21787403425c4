"""`TrainWorkload`: what one optimizer step processes, and in which precision."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from meshplan.specs.base import Frozen

Precision = Literal["bf16", "fp16", "fp8"]


class TrainWorkload(Frozen):
    """One optimizer step of mixed-precision training."""

    global_batch: int = Field(gt=0)
    """Sequences per optimizer step, over all data-parallel ranks."""
    seq_len: int = Field(gt=0)
    """Tokens per sequence."""
    precision: Precision = "bf16"
    """Matmul precision: bf16/fp16 mixed precision, or fp8 GEMMs (Transformer Engine style) with bf16 elsewhere."""
    optimizer: Literal["adam"] = "adam"
    """Adam(W) with fp32 master weights and two fp32 moments (12 bytes/param; ZeRO, Rajbhandari et al. 2020)."""
    flash_attention: bool = True
    """Fused (flash) attention: no s x s score matrix is stored (Dao et al. 2022)."""
    tp_comm_overlap: bool = False
    """Tensor-parallel collectives overlapped with the GEMMs (Megatron-Core / Transformer Engine `--tp-comm-overlap`)."""

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len
