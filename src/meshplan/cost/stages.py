"""How many layers each pipeline stage holds.

Layers are split as evenly as they go. When `pp` does not divide them, stages hold ⌈L/pp⌉ or ⌊L/pp⌋ layers
and the lighter stages are the first and the last, which also carry the embedding and the LM head — the
split Meta used for Llama 3 405B (126 layers on 16 stages: one layer fewer on the first and the last;
Llama 3 paper, §3.3.2) and BigScience for BLOOM. With interleaving a stage's layers are cut into vpp chunks; the stage totals
stay as above (Meta's interleaved schedule for Llama 3 ran with such a split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.errors import PlanError
from meshplan.strategy import StrategyTable


@dataclass(frozen=True)
class StageLayers:
    """Layers per stage, one value per strategy: the first, the second, the heaviest middle and the last stage."""

    first: np.ndarray
    second: np.ndarray
    """The stage after the first (it holds one micro-batch fewer under 1F1B, but may hold more layers)."""
    middle: np.ndarray
    """The heaviest stage that is neither first nor last (equal to `first` when pp <= 2)."""
    last: np.ndarray


def stage_sizes(num_layers: int, pp: int) -> list[int]:
    """Layers of each of the `pp` stages, in order, as `stage_layers` prices them: ⌈L/pp⌉ or ⌊L/pp⌋, the lighter
    stages being the last, then the first, then the second, third, ... (the one split the executor also runs)."""
    if pp < 1 or num_layers < pp:
        raise PlanError(f"cannot split {num_layers} layers into {pp} non-empty stages; use 1 <= pp <= layers")
    base, extra = divmod(num_layers, pp)
    light_order = [pp - 1, 0, *range(1, pp - 1)] if pp > 1 else [0]
    light = set(light_order[: pp - extra])
    return [base if k in light else base + 1 for k in range(pp)]


def stage_layers(num_layers: int, t: StrategyTable) -> StageLayers:
    pp = t.pp.astype(np.int64)
    base, extra = np.divmod(num_layers, np.maximum(pp, 1))  # `extra` stages hold base + 1 layers
    light = pp - extra  # stages with `base` layers
    heavy = (base + 1).astype(float)
    base_f = base.astype(float)
    # Light stages go first to the last stage, then to the first, then fill the remaining middle stages.
    last = np.where(light >= 1, base_f, heavy)
    first = np.where(light >= 2, base_f, heavy)
    middle = np.where(extra > 0, heavy, base_f)
    middle = np.where(pp <= 2, first, middle)
    second = np.where(pp <= 2, last, np.where(light >= 3, base_f, heavy))
    single = pp == 1
    total = float(num_layers)
    return StageLayers(
        first=np.where(single, total, first),
        second=np.where(single, total, second),
        middle=np.where(single, total, middle),
        last=np.where(single, total, last),
    )
