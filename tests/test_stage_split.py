"""The executor splits a uniform plan's layers over its stages exactly as the cost model prices them."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.cost.nonuniform import uniform_bounds
from meshplan.cost.stages import stage_layers, stage_sizes
from meshplan.errors import PlanError
from meshplan.run.parallel import check_runnable, chunk_layers
from meshplan.run.plan_run import tiny_model
from meshplan.strategy import Strategy, StrategyTable

PAIRS = [(layers, pp) for layers in range(1, 41) for pp in range(1, min(layers, 17) + 1)] + [(126, 16), (61, 16)]


def test_seven_layers_on_four_stages() -> None:
    # 7 = 4 x 1 + 3: three stages hold 2 layers, one holds 1; the light one is the last (it carries the LM head).
    assert stage_sizes(7, 4) == [2, 2, 2, 1]
    assert chunk_layers(7, 4) == [[0, 1], [2, 3], [4, 5], [6]]
    # Llama 3 405B (paper §3.3.2): 126 layers on 16 stages, one layer fewer on the first and the last stage.
    assert stage_sizes(126, 16) == [7] + [8] * 14 + [7]


@pytest.mark.parametrize("vpp", [1, 2, 3])
def test_executor_chunks_agree_with_the_priced_split(vpp: int) -> None:
    for layers, pp in PAIRS:
        if layers < pp * vpp:
            continue
        chunks = chunk_layers(layers, pp, vpp)
        assert [i for c in chunks for i in c] == list(range(layers))  # every layer once, in order
        assert min(len(c) for c in chunks) >= 1
        per_rank = [sum(len(chunks[r + k * pp]) for k in range(vpp)) for r in range(pp)]
        assert per_rank == stage_sizes(layers, pp), (layers, pp, vpp)


def test_stage_sizes_agree_with_the_vectorised_cost_model() -> None:
    for layers, pp in PAIRS:
        sizes = stage_sizes(layers, pp)
        assert sum(sizes) == layers and max(sizes) - min(sizes) <= 1
        assert list(np.diff(uniform_bounds(layers, pp))) == sizes
        priced = stage_layers(layers, StrategyTable.from_strategies([Strategy(dp=1, pp=pp)]))
        middle = max(sizes[1:-1]) if pp > 2 else sizes[0]
        second = sizes[1] if pp > 2 else sizes[-1]
        assert (priced.first[0], priced.second[0], priced.middle[0], priced.last[0]) == (
            sizes[0], second, middle, sizes[-1]), (layers, pp)


def test_stage_sizes_refuses_empty_stages() -> None:
    with pytest.raises(PlanError, match="3 layers into 4"):
        stage_sizes(3, 4)


def test_the_executor_refuses_more_chunks_than_layers() -> None:
    # 3 layers cannot give pp 2 x vpp 2 = 4 model chunks a layer each: refused up front, not an empty stage.
    s = Strategy(dp=1, pp=2, vpp=2, schedule="interleaved")
    with pytest.raises(PlanError, match="3 layers cannot fill pp=2 x vpp=2"):
        check_runnable(tiny_model(s, num_layers=3), s, global_batch=8, seq_len=16)
    check_runnable(tiny_model(s, num_layers=4), s, global_batch=8, seq_len=16)  # 4 layers: one per chunk
