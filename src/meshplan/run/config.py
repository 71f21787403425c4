"""`RunConfig`: what one distributed run executes (plain data: no torch import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from meshplan.specs.base import Frozen
from meshplan.specs.model import ModelSpec
from meshplan.strategy import Recompute, Strategy


class Fault(Frozen):
    """A fault to inject, for testing the launcher's error handling."""

    rank: int = Field(ge=0)
    kind: Literal["raise", "hang"]
    step: int = Field(default=0, ge=0)


class RunConfig(Frozen):
    """One training run: the model, its layout, the data per step, and how long to run."""

    model: ModelSpec
    strategy: Strategy
    global_batch: int = Field(gt=0)
    seq_len: int = Field(gt=0)
    steps: int = Field(default=5, gt=0)
    """Optimizer steps to run."""
    warmup: int = Field(default=1, ge=0)
    """Leading steps left out of the timing median."""
    seed: int = 0
    lr: float = Field(default=1e-3, gt=0)
    dtype: Literal["float32", "bfloat16"] = "float32"
    timeout_s: float = Field(default=300.0, gt=0)
    """Collective timeout inside the ranks (a hung rank fails the others after this)."""
    module_plan: dict[str, Literal["col", "row", "rep"]] | None = None
    """Per-module layout along the tp axis from `meshplan shard` (module name -> column / row / replicated);
    None: the Megatron layout of `strategy.tp`."""
    measure_memory: bool = True
    check_parity: bool = True
    """Record the global gradient norm each step (for parity; its cost is left out of the step time)."""
    fault: Fault | None = None
    stage_layers: list[int] | None = None
    """Layers of each pipeline stage (a non-uniform plan's layout); None: the even split."""
    layer_recompute: list[Recompute] | None = None
    """Recomputation of each layer (a non-uniform plan's layout); None: the strategy's for every layer."""
