"""The training cost model: consistency, properties and hand-checked terms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshplan.cost.efficiency import default_efficiency
from meshplan.cost.training import BREAKDOWN_KEYS, training_cost
from meshplan.specs import TrainWorkload, load_gpu, load_model, make_cluster
from meshplan.strategy import Strategy, StrategyTable

EFF = default_efficiency()
LLAMA70 = load_model("Llama-3.1-70B")
H100x64 = make_cluster(load_gpu("H100"), 64)


def cost(strategies, model=LLAMA70, cluster=H100x64, workload=None):
    workload = workload or TrainWorkload(global_batch=512, seq_len=8192)
    return training_cost(model, cluster, workload, StrategyTable.from_strategies(strategies), EFF)


def test_breakdown_sums_to_step_time() -> None:
    c = cost([Strategy(dp=4, tp=8, pp=2), Strategy(dp=2, tp=8, pp=4, vpp=5, schedule="interleaved", recompute="full"),
              Strategy(dp=64, zero=3, recompute="full"), Strategy(dp=2, tp=8, cp=4)])
    assert set(c.breakdown) == set(BREAKDOWN_KEYS)
    np.testing.assert_allclose(sum(c.breakdown.values()), c.step_time_s, rtol=1e-12)
    assert np.all(c.step_time_s > 0)


def test_vectorised_rows_equal_single_rows() -> None:
    strategies = [Strategy(dp=4, tp=8, pp=2), Strategy(dp=8, tp=8, recompute="selective"),
                  Strategy(dp=2, tp=4, pp=8, vpp=2, schedule="interleaved", micro_batch=2)]
    together = cost(strategies)
    for i, s in enumerate(strategies):
        alone = cost([s])
        assert alone.step_time_s[0] == pytest.approx(together.step_time_s[i], rel=1e-12)
        assert alone.peak_memory_bytes[0] == pytest.approx(together.peak_memory_bytes[i], rel=1e-12)


def test_throughput_identities() -> None:
    c = cost([Strategy(dp=4, tp=8, pp=2)])
    tokens = 512 * 8192
    assert c.tokens_per_s[0] == pytest.approx(tokens / c.step_time_s[0])
    assert c.tokens_per_s_per_gpu[0] == pytest.approx(c.tokens_per_s[0] / 64)
    assert c.mfu[0] == pytest.approx(c.tflops_per_gpu[0] * 1e12 / 989e12)
    assert c.hfu[0] == pytest.approx(c.mfu[0])  # no recomputation


def test_full_recompute_costs_a_forward() -> None:
    c = cost([Strategy(dp=4, tp=8, pp=2), Strategy(dp=4, tp=8, pp=2, recompute="full")])
    # the recompute term is one forward pass of every layer: a third of the layers' forward+backward compute
    assert c.breakdown["recompute"][0] == 0
    assert c.breakdown["recompute"][1] == pytest.approx(c.breakdown["compute"][1] / 3, rel=0.05)
    assert c.hfu[1] == pytest.approx(c.mfu[1] * 4 / 3, rel=1e-9)
    assert c.breakdown["compute"][1] == pytest.approx(c.breakdown["compute"][0], rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(pp=st.sampled_from([2, 4, 8]), batch=st.sampled_from([64, 128, 256, 512, 1024]))
def test_more_microbatches_never_enlarge_the_bubble_fraction(pp: int, batch: int) -> None:
    s = Strategy(dp=64 // (8 * pp), tp=8, pp=pp)
    small = cost([s], workload=TrainWorkload(global_batch=batch, seq_len=4096))
    large = cost([s], workload=TrainWorkload(global_batch=2 * batch, seq_len=4096))
    frac = lambda c: c.breakdown["pp_bubble"][0] / c.step_time_s[0]  # noqa: E731
    assert frac(large) <= frac(small)


def test_interleaving_shrinks_the_bubble_by_vpp() -> None:
    c = cost([Strategy(dp=2, tp=8, pp=4), Strategy(dp=2, tp=8, pp=4, vpp=5, schedule="interleaved")])
    assert c.breakdown["pp_bubble"][1] == pytest.approx(c.breakdown["pp_bubble"][0] / 5, rel=0.02)


def test_tp_across_nodes_is_slower_than_inside() -> None:
    fast = make_cluster(load_gpu("H100"), 64)
    slow = make_cluster(load_gpu("H100"), 64, intra_node_bytes_per_s=fast.inter_node_bytes_per_s)
    s = [Strategy(dp=8, tp=8)]
    assert cost(s, cluster=slow).breakdown["tp_comm"][0] > 5 * cost(s, cluster=fast).breakdown["tp_comm"][0]


def test_zero3_with_one_microbatch_per_gpu_is_communication_bound() -> None:
    """Narayanan et al. 2021 Table 2: ZeRO-3 on GPT-3 175B slows down as the per-GPU batch shrinks."""
    gpt = load_model("GPT-3-175B")
    w = TrainWorkload(global_batch=1536, seq_len=2048, precision="fp16")
    per_gpu = []
    for n, mb in [(384, 4), (768, 2), (1536, 1)]:
        c = cost([Strategy(dp=n, zero=3, micro_batch=mb, recompute="full")], model=gpt,
                 cluster=make_cluster(load_gpu("A100-80GB"), n), workload=w)
        per_gpu.append(c.tflops_per_gpu[0])
    assert per_gpu[0] > per_gpu[1] > per_gpu[2]


def test_zero3_under_pp_gathers_once_per_step() -> None:
    """Under PP, torch.distributed.pipelining keeps a ZeRO-3 stage unsharded between micro-batches: each layer is
    gathered once and reduce-scattered once per step — ZeRO-1's volume, with a latency per layer — where without PP
    ZeRO-3 gathers every micro-batch (16 here). Nothing hidden (dp_overlap 0), so the collectives show in full."""
    eff = EFF.model_copy(update={"dp_overlap": 0.0})
    w = TrainWorkload(global_batch=128, seq_len=8192)  # 128 / dp 8 = 16 micro-batches per step
    rows = [Strategy(dp=8, tp=8, pp=2, zero=3), Strategy(dp=8, tp=8, pp=2, zero=1)]
    dp = training_cost(LLAMA70, make_cluster(load_gpu("H100"), 128), w, StrategyTable.from_strategies(rows),
                       eff).breakdown["dp_comm"]
    assert dp[1] > 0
    assert dp[1] <= dp[0] < 1.5 * dp[1]


def test_moe_expert_parallel_pays_all_to_all() -> None:
    mixtral = load_model("Mixtral-8x7B")
    w = TrainWorkload(global_batch=256, seq_len=4096)
    c = cost([Strategy(dp=16, pp=4, ep=8, vpp=8, schedule="interleaved"), Strategy(dp=16, pp=4, ep=1, vpp=8,
              schedule="interleaved")], model=mixtral, workload=w)
    assert c.breakdown["ep_comm"][0] > 0 and c.breakdown["ep_comm"][1] == 0
    assert c.memory.weights[0] < c.memory.weights[1]  # experts sharded 8 ways


def test_fp8_is_faster_than_bf16_but_not_twice() -> None:
    s = [Strategy(dp=4, tp=8, pp=2)]
    bf16 = cost(s, workload=TrainWorkload(global_batch=512, seq_len=8192))
    fp8 = cost(s, workload=TrainWorkload(global_batch=512, seq_len=8192, precision="fp8"))
    assert 1.0 < bf16.step_time_s[0] / fp8.step_time_s[0] < 2.0
