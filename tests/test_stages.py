"""Layers per pipeline stage, including uneven splits."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.cost.stages import stage_layers
from meshplan.strategy import Strategy, StrategyTable


@pytest.mark.parametrize(
    ("layers", "pp", "expected"),
    [
        (126, 16, (7, 8, 8, 7)),  # Llama 3 405B: 14 stages of 8, the first and last of 7 (Llama 3 paper §3.3.2)
        (70, 12, (5, 6, 6, 5)),  # BLOOM: 10 stages of 6, first and last of 5
        (96, 8, (12, 12, 12, 12)),  # even
        (13, 4, (3, 3, 4, 3)),  # 3 light stages: last, first, second; one heavy in the middle
        (70, 3, (23, 24, 24, 23)),
        (80, 2, (40, 40, 40, 40)),
        (80, 1, (80, 80, 80, 80)),
    ],
)
def test_stage_layers(layers: int, pp: int, expected: tuple[int, int, int, int]) -> None:
    s = stage_layers(layers, StrategyTable.from_strategies([Strategy(dp=1, pp=pp)]))
    assert (s.first[0], s.second[0], s.middle[0], s.last[0]) == expected


def test_stages_account_for_every_layer() -> None:
    pps = [2, 3, 5, 7, 16, 40]
    s = stage_layers(126, StrategyTable.from_strategies([Strategy(dp=1, pp=p) for p in pps]))
    for i, pp in enumerate(pps):
        base, extra = divmod(126, pp)
        assert max(s.first[i], s.middle[i], s.last[i]) == base + (1 if extra else 0)
        assert min(s.first[i], s.last[i]) == base
    assert np.all(s.first <= s.middle)
