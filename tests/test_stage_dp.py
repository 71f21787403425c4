"""Stage-partition DP: equal to brute force on every instance small enough to enumerate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshplan.errors import PlanError
from meshplan.search.stage_dp import LayerCosts, partition, partition_brute_force


@st.composite
def instances(draw):  # type: ignore[no-untyped-def]
    n = draw(st.integers(2, 10))
    stages = draw(st.integers(1, min(n, 5)))
    floats = st.floats(0.1, 10.0, allow_nan=False)
    costs = LayerCosts(
        time_s=np.array(draw(st.lists(floats, min_size=n, max_size=n))),
        state_bytes=np.array(draw(st.lists(floats, min_size=n, max_size=n))),
        activation_bytes=np.array(draw(st.lists(floats, min_size=n, max_size=n))),
        first_time_s=draw(st.floats(0, 5)), last_time_s=draw(st.floats(0, 5)),
        first_bytes=draw(st.floats(0, 5)), last_bytes=draw(st.floats(0, 5)),
    )
    limit = draw(st.floats(5.0, 200.0))
    return costs, stages, limit


@settings(max_examples=300, deadline=None)
@given(instances())
def test_dp_equals_brute_force(instance) -> None:  # type: ignore[no-untyped-def]
    costs, stages, limit = instance
    oracle = partition_brute_force(costs, stages, limit)
    if oracle is None:
        with pytest.raises(PlanError, match="no split"):
            partition(costs, stages, limit)
        return
    got = partition(costs, stages, limit)
    assert got.bottleneck_s == pytest.approx(oracle.bottleneck_s, rel=1e-12)
    assert np.all(got.stage_bytes <= limit) and sum(got.layers_per_stage) == len(costs.time_s)
    assert min(got.layers_per_stage) >= 1


def test_uniform_layers_split_evenly_and_the_head_takes_a_lighter_stage() -> None:
    # 8 equal layers of 1 s on 4 stages: 2 layers each, bottleneck 2 s (hand-derived)
    even = LayerCosts(time_s=np.ones(8), state_bytes=np.zeros(8), activation_bytes=np.zeros(8))
    p = partition(even, 4, memory_limit_bytes=1.0)
    assert p.layers_per_stage == (2, 2, 2, 2) and p.bottleneck_s == 2.0
    # 9 layers and a 1.5 s LM head on 4 stages: a 2.5 s bottleneck allows at most 2+2+2 layers plus 1 with the
    # head (7 < 9), so the optimum is 3 s, reached with a single layer beside the head (1 + 1.5 = 2.5 s).
    head = LayerCosts(time_s=np.ones(9), state_bytes=np.zeros(9), activation_bytes=np.zeros(9), last_time_s=1.5)
    p = partition(head, 4, memory_limit_bytes=1.0)
    assert p.bottleneck_s == 3.0 and p.layers_per_stage[-1] == 1


def test_memory_pushes_layers_to_later_stages() -> None:
    # 1F1B: stage s holds S - s micro-batches of activations; with activations dominating, the first stage
    # (4 in flight) can hold fewer layers than the last (1 in flight).
    costs = LayerCosts(time_s=np.ones(8), state_bytes=np.zeros(8), activation_bytes=np.ones(8))
    p = partition(costs, 4, memory_limit_bytes=4.0)
    assert p.layers_per_stage[0] == 1 and p.layers_per_stage[-1] >= 2
    assert np.all(p.stage_bytes <= 4.0)


def test_infeasible_says_by_how_much() -> None:
    costs = LayerCosts(time_s=np.ones(4), state_bytes=np.full(4, 10e9), activation_bytes=np.zeros(4))
    with pytest.raises(PlanError, match=r"needs 10\.00 GB more"):
        partition(costs, 2, memory_limit_bytes=10e9)
