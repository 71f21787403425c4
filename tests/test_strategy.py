"""Validity rules, each with its reason."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.errors import PlanError
from meshplan.specs import TrainWorkload, load_gpu, load_model, make_cluster
from meshplan.strategy import RULES, Strategy, StrategyTable, check_strategy, valid_mask, violations

LLAMA70 = load_model("Llama-3.1-70B")  # 64 heads, 8 KV heads, 80 layers, ffn 28672
H100x64 = make_cluster(load_gpu("H100"), 64)
W = TrainWorkload(global_batch=512, seq_len=8192)


@pytest.mark.parametrize(
    ("strategy", "rule"),
    [
        (Strategy(dp=4, tp=8, pp=4), "gpu_count"),
        (Strategy(dp=1, tp=2, pp=32), None),  # 80 layers on 32 stages: an uneven split is allowed
        (Strategy(dp=2, tp=2, pp=16, vpp=3, schedule="interleaved"), None),  # uneven chunks are allowed
        (Strategy(dp=2, tp=2, pp=16, vpp=6, schedule="interleaved"), "layers_vpp"),  # 96 chunks > 80 layers
        (Strategy(dp=64, tp=1, pp=1, micro_batch=3), "batch_dp"),
        (Strategy(dp=1, tp=16, pp=4), "tp_node"),
        (Strategy(dp=8, tp=8, pp=1, ep=2), "ep_dense"),
        (Strategy(dp=4, tp=8, pp=2, vpp=2), "vpp_schedule"),  # vpp without interleaved
        (Strategy(dp=8, tp=8, pp=1, vpp=2, schedule="interleaved"), "vpp_schedule"),  # interleaving needs pp > 1
        (Strategy(dp=4, tp=8, pp=2, schedule="interleaved"), "vpp_schedule"),  # interleaved needs vpp > 1
        (Strategy(dp=8, tp=1, pp=8, sequence_parallel=True), "sp_needs_tp"),
        (Strategy(dp=4, tp=4, pp=1, cp=4, micro_batch=1), None),
    ],
)
def test_rules_name_the_violation(strategy: Strategy, rule: str | None) -> None:
    broken = [name for name, col in violations(StrategyTable.from_strategies([strategy]), LLAMA70, H100x64, W).items()
              if col[0]]
    assert broken == ([rule] if rule else [])


def test_heads_not_divisible_by_tp() -> None:
    m = load_model("GPT-3-2.7B")  # 32 heads
    c = make_cluster(load_gpu("A100"), 24, gpus_per_node=24)
    with pytest.raises(PlanError, match=r"heads not divisible by tp \(heads=32, tp=24\)"):
        check_strategy(Strategy(dp=1, tp=24), m, c, TrainWorkload(global_batch=8, seq_len=2048))


def test_kv_heads_replicated_when_tp_is_a_multiple() -> None:
    m = load_model("Qwen2.5-7B")  # 28 heads, 4 KV heads
    c = make_cluster(load_gpu("A100"), 28, gpus_per_node=28)
    w = TrainWorkload(global_batch=28, seq_len=4096)
    bad = StrategyTable.from_strategies([Strategy(dp=4, tp=7)])
    assert violations(bad, m, c, w)["kv_heads_tp"][0]
    ok = StrategyTable.from_strategies([Strategy(dp=7, tp=4)])
    assert not violations(ok, m, c, w)["kv_heads_tp"][0]


def test_moe_rules() -> None:
    m = load_model("Mixtral-8x7B")
    c = make_cluster(load_gpu("H100"), 64)
    w = TrainWorkload(global_batch=256, seq_len=4096)
    t = StrategyTable.from_strategies([Strategy(dp=16, pp=4, ep=8), Strategy(dp=16, pp=4, ep=3),
                                       Strategy(dp=4, pp=4, tp=4, ep=8)])
    v = violations(t, m, c, w)
    assert not any(col[0] for col in v.values())
    assert v["ep_experts"][1]
    assert v["ep_dp"][2]  # ep=8 does not divide dp*cp=4


def test_table_round_trip_and_mask() -> None:
    strategies = [Strategy(dp=8, tp=8), Strategy(dp=4, tp=8, pp=2, vpp=2, schedule="interleaved", recompute="full"),
                  Strategy(dp=3, tp=8)]
    t = StrategyTable.from_strategies(strategies)
    assert [t.row(i) for i in range(3)] == strategies
    assert valid_mask(t, LLAMA70, H100x64, W).tolist() == [True, True, False]


def test_every_rule_has_reason_and_fix() -> None:
    assert len({r.name for r in RULES}) == len(RULES)
    assert all(r.reason and r.fix for r in RULES)


def test_check_strategy_message_is_one_line_with_fix() -> None:
    with pytest.raises(PlanError) as err:
        check_strategy(Strategy(dp=2, tp=2, pp=16, vpp=6, schedule="interleaved"), LLAMA70, H100x64, W)
    msg = str(err.value)
    assert "\n" not in msg and "layers=80, pp*vpp=96" in msg and "pp*vpp <=" in msg


def test_valid_mask_is_vectorised() -> None:
    dp = np.array([64, 32, 8, 4])
    t = StrategyTable(dp=dp, tp=np.array([1, 2, 8, 8]), pp=np.array([1, 1, 1, 2]), cp=np.ones(4, int),
                      ep=np.ones(4, int), vpp=np.ones(4, int), micro_batch=np.ones(4, int), zero=np.ones(4, int),
                      sequence_parallel=np.zeros(4, bool), recompute=np.zeros(4, int), schedule=np.zeros(4, int))
    assert valid_mask(t, LLAMA70, H100x64, W).all()


def test_cross_node_tp_only_when_asked() -> None:
    s = Strategy(dp=1, tp=16, pp=4)
    w = TrainWorkload(global_batch=64, seq_len=4096)
    with pytest.raises(PlanError, match="--allow-cross-node-tp"):
        check_strategy(s, LLAMA70, H100x64, w)
    check_strategy(s, LLAMA70, make_cluster(load_gpu("H100"), 64, allow_cross_node_tp=True), w)
