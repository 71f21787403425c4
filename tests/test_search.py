"""Exhaustive search: the vectorised search equals the plain loop; constraints, objectives, anchors."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.cost.efficiency import default_efficiency
from meshplan.errors import PlanError
from meshplan.search import SearchRequest, search_exhaustive
from meshplan.search.reference import search_reference
from meshplan.space import SpaceConstraints
from meshplan.specs import TrainWorkload, load_gpu, load_model, make_cluster

EFF = default_efficiency()


def request(model: str, gpu: str, n: int, batch: int, seq: int, **kw) -> SearchRequest:
    constraints = SpaceConstraints(**kw.pop("constraints", {}))
    return SearchRequest(model=load_model(model), cluster=make_cluster(load_gpu(gpu), n),
                         workload=TrainWorkload(global_batch=batch, seq_len=seq), constraints=constraints,
                         efficiency=EFF, **kw)


@pytest.mark.parametrize(
    "req",
    [
        request("Llama-3.1-8B", "H100", 16, 64, 4096, top_k=25, constraints={"max_cp": 2}),
        request("Mixtral-8x7B", "H100", 16, 32, 4096, top_k=25, constraints={"max_pp": 2, "max_cp": 2, "zero": 1}),
        request("GPT-3-13B", "A100-40GB", 8, 32, 2048, top_k=40, objective="memory", memory_headroom=0.1),
    ],
    ids=["llama8b", "mixtral", "gpt13b-memory"],
)
def test_vectorised_search_equals_the_plain_loop(req: SearchRequest) -> None:
    fast = search_exhaustive(req, chunk_size=997)  # odd chunks: the merge across chunks is exercised
    slow = search_reference(req)
    assert fast.space_size == slow.space_size
    assert fast.pruned == slow.pruned
    assert (fast.num_valid, fast.num_fit) == (slow.num_valid, slow.num_fit)
    assert len(fast.ranked) == len(slow.ranked) > 0
    assert fast.ranked.index.tolist() == slow.ranked.index.tolist()
    for i in range(len(fast.ranked)):
        assert fast.ranked.table.row(i) == slow.ranked.table.row(i)
    np.testing.assert_allclose(fast.ranked.cost.step_time_s, slow.ranked.cost.step_time_s, rtol=1e-12)
    np.testing.assert_allclose(fast.ranked.cost.peak_memory_bytes, slow.ranked.cost.peak_memory_bytes, rtol=1e-12)


def test_every_enumerated_strategy_is_accounted_for() -> None:
    r = search_exhaustive(request("Llama-3.1-70B", "H100", 64, 512, 8192))
    assert r.space_size == r.num_valid + sum(v for k, v in r.pruned.items() if k != "exceeds GPU memory")
    assert r.num_fit == r.num_valid - r.pruned.get("exceeds GPU memory", 0)


def test_ranking_is_by_throughput_and_everything_ranked_fits() -> None:
    r = search_exhaustive(request("Llama-3.1-70B", "H100", 64, 512, 8192, memory_headroom=0.1))
    tput = r.ranked.cost.tokens_per_s
    assert np.all(np.diff(tput) <= 0)
    assert np.all(r.ranked.cost.peak_memory_bytes <= 0.9 * 80e9)


def test_pins_and_limits_hold() -> None:
    r = search_exhaustive(request("Llama-3.1-70B", "H100", 64, 512, 8192, top_k=50,
                                  constraints={"tp": 8, "max_pp": 4, "cp": 1, "recompute": "selective"}))
    t = r.ranked.table
    assert set(t.tp.tolist()) == {8} and t.pp.max() <= 4 and set(t.cp.tolist()) == {1}
    assert set(t.recompute.tolist()) == {1}


def test_memory_objective_finds_the_smallest_footprint() -> None:
    r = search_exhaustive(request("Llama-3.1-8B", "H100", 8, 64, 4096, objective="memory"))
    assert np.all(np.diff(r.ranked.cost.peak_memory_bytes) >= 0)
    assert r.ranked.cost.peak_memory_bytes[0] == pytest.approx(float(r.least_memory.cost.peak_memory_bytes[0]))


def test_nothing_fits_keeps_the_least_memory_strategy() -> None:
    r = search_exhaustive(request("Llama-3.1-405B", "H100", 8, 8, 8192))
    assert len(r.ranked) == 0 and r.num_fit == 0
    assert r.least_memory is not None and r.least_memory.cost.peak_memory_bytes[0] > 80e9


def test_pin_that_does_not_divide_is_an_input_error() -> None:
    with pytest.raises(PlanError, match="--tp 3 does not divide num_gpus=64"):
        search_exhaustive(request("Llama-3.1-70B", "H100", 64, 512, 8192, constraints={"tp": 3}))
