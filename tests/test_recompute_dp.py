"""Per-layer recomputation DP: equal to brute force; quantisation never breaks the byte budget."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshplan.errors import PlanError
from meshplan.search.recompute_dp import choose_recompute, choose_recompute_brute_force, quantize


@st.composite
def instances(draw):  # type: ignore[no-untyped-def]
    layers = draw(st.integers(1, 6))
    # options: none (most memory, no time), selective, full (least memory, most time)
    mem = np.array([sorted(draw(st.lists(st.integers(0, 20), min_size=3, max_size=3)), reverse=True)
                    for _ in range(layers)])
    time = np.array([sorted(draw(st.lists(st.floats(0, 5), min_size=3, max_size=3))) for _ in range(layers)])
    budget = draw(st.integers(0, 80))
    return time, mem, budget


@settings(max_examples=300, deadline=None)
@given(instances())
def test_dp_equals_brute_force(instance) -> None:  # type: ignore[no-untyped-def]
    time, mem, budget = instance
    oracle = choose_recompute_brute_force(time, mem, budget)
    if oracle is None:
        with pytest.raises(PlanError, match="over the budget"):
            choose_recompute(time, mem, budget)
        return
    got = choose_recompute(time, mem, budget)
    # the oracle breaks ties within math.isclose (relative 1e-9) towards less memory, so it may sit that far above
    assert got.time_s == pytest.approx(oracle.time_s, rel=1e-9, abs=1e-9)
    idx = np.arange(len(got.option)), got.option
    assert mem[idx].sum() <= budget and time[idx].sum() == pytest.approx(got.time_s)


def test_recompute_only_what_the_budget_forces() -> None:
    # 4 identical layers: none = 10 units / 0 s, full = 2 units / 1 s; budget 28 = 2 full + 2 none (2*2 + 2*10 = 24)
    time = np.array([[0.0, 1.0]] * 4)
    mem = np.array([[10, 2]] * 4)
    got = choose_recompute(time, mem, 28)
    assert sorted(got.option.tolist()) == [0, 0, 1, 1] and got.time_s == 2.0


def test_quantised_choice_fits_in_bytes() -> None:
    rng = np.random.default_rng(0)
    nbytes = rng.uniform(1e8, 5e9, size=(20, 3))
    nbytes.sort(axis=1)
    nbytes = nbytes[:, ::-1]
    time = np.sort(rng.uniform(0, 1, size=(20, 3)), axis=1)
    budget = 40e9
    units, budget_units = quantize(nbytes, budget)
    got = choose_recompute(time, units, budget_units)
    assert nbytes[np.arange(20), got.option].sum() <= budget
