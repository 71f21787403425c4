"""Non-uniform plans: the per-layer pricing agrees with the uniform cost model, the joint DP equals brute force,
the closed-form per-stage recomputation equals the knapsack DP, and the searchers reach the optimum."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nonuniform_tables import synthetic_table

from meshplan.cost.efficiency import default_efficiency
from meshplan.cost.nonuniform import LayerCostTable, fits, layer_cost_table, price, uniform_bounds
from meshplan.cost.stages import stage_layers
from meshplan.cost.training import training_cost
from meshplan.errors import PlanError
from meshplan.search.encoding import repair_bounds
from meshplan.search.nonuniform import brute_force, solve_dp, stage_choices, uniform_plan
from meshplan.search.recompute_dp import choose_recompute
from meshplan.specs import load_model
from meshplan.specs.catalog import load_gpu
from meshplan.specs.cluster import make_cluster
from meshplan.specs.workload import TrainWorkload
from meshplan.strategy import RECOMPUTE_CODES, Strategy, StrategyTable

CASES = [  # model, GPUs, strategy, global batch, sequence
    ("llama-3.1-8b", 64, Strategy(dp=8, tp=2, pp=4), 512, 4096),
    ("llama-3.1-8b", 8, Strategy(dp=8), 64, 4096),
    ("llama-3.1-8b", 64, Strategy(dp=4, tp=2, pp=8, schedule="gpipe"), 512, 4096),
    ("llama-3.1-70b", 512, Strategy(dp=16, tp=8, pp=4, zero=3, recompute="full", sequence_parallel=True), 1024, 4096),
    ("llama-3.1-405b", 16384, Strategy(dp=128, tp=8, pp=16, recompute="selective"), 2048, 8192),  # 126 on 16: uneven
]


@pytest.mark.parametrize(("name", "gpus", "strategy", "batch", "seq"), CASES)
def test_uniform_split_prices_as_the_uniform_cost_model(name: str, gpus: int, strategy: Strategy, batch: int,
                                                        seq: int) -> None:
    # The even split with one recomputation for every layer is the plan `training_cost` prices: same step time
    # and, since the worst stage is the first or last one here, the same peak memory.
    model, cluster = load_model(name), make_cluster(load_gpu("H100-SXM"), gpus)
    workload = TrainWorkload(global_batch=batch, seq_len=seq)
    table = layer_cost_table(model, cluster, workload, strategy, default_efficiency())
    bounds = uniform_bounds(model.num_layers, strategy.pp)
    sl = stage_layers(model.num_layers, StrategyTable.from_strategies([strategy]))
    assert np.diff(bounds)[0] == sl.first[0] and np.diff(bounds)[-1] == sl.last[0]
    got = price(table, bounds, np.full(model.num_layers, RECOMPUTE_CODES.index(strategy.recompute)))
    want = training_cost(model, cluster, workload, StrategyTable.from_strategies([strategy]), default_efficiency())
    assert got.step_time_s[0] == pytest.approx(want.step_time_s[0], rel=1e-12)
    if strategy.zero == 3 and strategy.pp > 1:
        # ZeRO-3 under PP: training_cost keeps the larger of the backward's moment (no sharded gradients yet) and
        # the final reduce-scatter's (no activations); the stage DP adds both, a bound above by at most the
        # activations and logits it counts at the end.
        extra = want.memory.activations[0] + want.memory.logits[0] + want.memory.gradients[0]
        assert want.peak_memory_bytes[0] <= got.peak_bytes[0] <= want.peak_memory_bytes[0] + extra
        assert got.peak_bytes[0] > want.peak_memory_bytes[0]
    else:
        assert got.peak_bytes[0] == pytest.approx(want.peak_memory_bytes[0], rel=1e-12)


def test_interleaved_base_is_refused() -> None:
    model, cluster = load_model("llama-3.1-8b"), make_cluster(load_gpu("H100-SXM"), 64)
    with pytest.raises(PlanError, match="interleaved"):
        layer_cost_table(model, cluster, TrainWorkload(global_batch=512, seq_len=4096),
                         Strategy(dp=8, tp=2, pp=4, vpp=2, schedule="interleaved"), default_efficiency())


@st.composite
def small_instances(draw):  # type: ignore[no-untyped-def]
    layers = draw(st.integers(2, 6))
    pp = draw(st.integers(1, min(layers, 3)))
    leading = draw(st.integers(0, min(2, layers)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return synthetic_table(rng, layers, pp, leading), draw(st.floats(3.0, 30.0))


@settings(max_examples=150, deadline=None)
@given(small_instances())
def test_joint_dp_equals_brute_force(instance) -> None:  # type: ignore[no-untyped-def]
    # Brute force: every split x every per-layer recomputation (up to 3^6 x 10 = 7,290 plans).
    table, limit = instance
    oracle = brute_force(table, limit)
    got = solve_dp(table, limit).plan
    assert (got is None) == (oracle is None)
    if oracle is not None and got is not None:
        assert got.step_time_s == pytest.approx(oracle.step_time_s, rel=1e-12)
        assert fits(got.peak_bytes, limit)


def test_closed_form_stage_recompute_equals_the_knapsack_dp() -> None:
    # One stage (pp=1, one micro-batch in flight), identical layers, integer bytes and no working set: the
    # closed form's best time for every layer count equals the multiple-choice knapsack's.
    rng = np.random.default_rng(7)
    for _ in range(40):
        layers = int(rng.integers(1, 9))
        table = synthetic_table(rng, layers, 1, m=1.0, edges=False)
        act = -np.sort(-rng.integers(0, 12, (2, 3)), axis=1).astype(float)
        table = LayerCostTable(**{**table.__dict__, "act_bytes": act, "state_bytes": np.zeros(2), "working_bytes": 0.0,
                                  "fixed_bytes": 0.0})
        budget = int(rng.integers(0, 60))
        closed = stage_choices(table, float(budget)).time_s[0, 0, layers]
        try:
            knap = choose_recompute(np.tile(table.time_s[1], (layers, 1)), np.tile(act[1], (layers, 1)).astype(int),
                                    budget).time_s
        except PlanError:
            knap = np.inf
        assert closed == pytest.approx(knap, rel=1e-12)


def test_uniform_model_non_uniform_optimum_equals_the_uniform_one() -> None:
    # Identical layers, no embedding or head cost, GPipe (every stage holds all m micro-batches) and no memory
    # pressure: nothing distinguishes the stages, so the even split without recomputation is optimal.
    rng = np.random.default_rng(3)
    for pp, layers in ((2, 8), (4, 8), (3, 9)):
        table = synthetic_table(rng, layers, pp, edges=False)
        table = LayerCostTable(**{**table.__dict__, "in_flight": np.full(pp, table.num_microbatches)})
        even = uniform_plan(table, RECOMPUTE_CODES.index("none"))
        best = solve_dp(table, 1e9).plan
        assert best is not None and best.step_time_s == pytest.approx(even.step_time_s, rel=1e-12)
        assert best.layers_per_stage == even.layers_per_stage


def test_non_uniform_is_never_worse_than_uniform_on_real_bases() -> None:
    # Every uniform plan of a base is in the non-uniform space, and the DP is exact on it.
    model, cluster = load_model("llama-3.1-70b"), make_cluster(load_gpu("H100-SXM"), 256)
    workload = TrainWorkload(global_batch=512, seq_len=4096)
    for s in (Strategy(dp=4, tp=8, pp=8), Strategy(dp=8, tp=4, pp=8, zero=3), Strategy(dp=2, tp=8, pp=16)):
        table = layer_cost_table(model, cluster, workload, s, default_efficiency())
        limit = cluster.gpu.hbm_bytes
        best = solve_dp(table, limit).plan
        for code in range(3):
            even = uniform_plan(table, code)
            if even.peak_bytes <= limit:
                assert best is not None and best.step_time_s <= even.step_time_s * (1 + 1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_repaired_bounds_are_always_a_valid_split(layers: int, pp: int, seed: int) -> None:
    pp = min(pp, layers)
    offsets = np.random.default_rng(seed).integers(-layers, layers + 1, size=(16, pp - 1))
    bounds = repair_bounds(uniform_bounds(layers, pp), offsets, layers)
    assert np.all(bounds[:, 0] == 0) and np.all(bounds[:, -1] == layers) and np.all(np.diff(bounds, axis=1) >= 1)
