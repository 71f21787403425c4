"""Memory: Korthikanti activations, ZeRO model states, and monotonic properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshplan.cost.memory import activation_bytes_per_layer, memory_breakdown, microbatches_in_flight, stage_params
from meshplan.specs import TrainWorkload, load_model
from meshplan.strategy import Strategy

from conftest import table


def test_korthikanti_activation_bytes_per_layer(gpt3_175b, workload_2k) -> None:
    # Korthikanti et al. 2022 Table 2, s=2048, b=1, h=12288, a=96, t=8; s·b·h = 25,165,824
    sbh = 2048 * 12288
    rows = table(
        Strategy(dp=1, tp=8),                                            # TP only
        Strategy(dp=1, tp=8, sequence_parallel=True),                    # TP + SP
        Strategy(dp=1, tp=8, sequence_parallel=True, recompute="selective"),
        Strategy(dp=1, tp=8, recompute="full"),
        Strategy(dp=1, tp=1),                                            # no parallelism
    )
    got = activation_bytes_per_layer(gpt3_175b, workload_2k, rows, moe=False)
    five_as_over_h = 5 * 96 * 2048 / 12288  # = 80
    expected = [
        sbh * (10 + 24 / 8 + five_as_over_h / 8),  # sbh(10 + 24/t + 5as/ht) = 578,813,952
        sbh / 8 * (34 + five_as_over_h),           # sbh/t (34 + 5as/h)    = 358,612,992
        sbh / 8 * 34,                              # 34 sbh/t               = 106,954,752
        2 * sbh,                                   # full recompute: layer input only
        sbh * (34 + five_as_over_h),               # sbh(34 + 5as/h)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert expected[0] == 578_813_952


def test_zero_model_state_bytes(gpt3_175b) -> None:
    """2 B weights + 4 B fp32 grads + 12 B Adam states per parameter, sharded by stage over N_d = dp·cp."""
    rows = table(*(Strategy(dp=64, zero=z) for z in range(4)))
    w = TrainWorkload(global_batch=64, seq_len=2048)
    mem = memory_breakdown(gpt3_175b, w, rows)
    psi = stage_params(gpt3_175b, rows)["first"][0]  # pp=1, tp=1: every parameter
    assert psi == gpt3_175b.total_params()
    states = mem.weights + mem.gradients + mem.optimizer
    nd = 64
    np.testing.assert_allclose(states, [
        18 * psi,                       # stage 0
        6 * psi + 12 * psi / nd,        # stage 1: optimizer sharded
        2 * psi + 16 * psi / nd,        # stage 2: + gradients
        18 * psi / nd,                  # stage 3: + weights
    ], rtol=1e-12)


def test_first_stage_holds_pp_microbatches_interleaved_more() -> None:
    w = TrainWorkload(global_batch=256, seq_len=2048)
    rows = table(Strategy(dp=1, pp=8), Strategy(dp=1, pp=8, vpp=2, schedule="interleaved"),
                 Strategy(dp=1, pp=8, schedule="gpipe"), Strategy(dp=1))
    first, last = microbatches_in_flight(rows, w)
    np.testing.assert_allclose(first, [8, 8 + 7 / 2, 256, 1])
    np.testing.assert_allclose(last, [1, 1, 256, 1])


degrees = st.sampled_from([1, 2, 4, 8])


@settings(max_examples=60, deadline=None)
@given(tp=degrees, pp=degrees, zero=st.integers(0, 3), model=st.sampled_from(["Llama-3.1-70B", "Mixtral-8x7B", "GPT-3-13B"]))
def test_more_tp_or_pp_never_raises_weight_memory(tp: int, pp: int, zero: int, model: str) -> None:
    m = load_model(model)
    w = TrainWorkload(global_batch=512, seq_len=4096)
    base = Strategy(dp=4, tp=tp, pp=pp, zero=zero)
    more_tp = base.model_copy(update={"tp": tp * 2})
    more_pp = base.model_copy(update={"pp": pp * 2})
    weights = memory_breakdown(m, w, table(base, more_tp, more_pp)).weights
    assert weights[1] <= weights[0] and weights[2] <= weights[0]


@settings(max_examples=60, deadline=None)
@given(tp=degrees, pp=degrees, mb=st.sampled_from([1, 2, 4]), rc=st.sampled_from(["none", "selective", "full"]))
def test_higher_zero_stage_never_uses_more_memory(tp: int, pp: int, mb: int, rc: str) -> None:
    m = load_model("Llama-3.1-70B")
    w = TrainWorkload(global_batch=512, seq_len=4096)
    rows = table(*(Strategy(dp=8, tp=tp, pp=pp, micro_batch=mb, recompute=rc, zero=z) for z in range(4)))
    states = memory_breakdown(m, w, rows)
    total = states.weights + states.gradients + states.optimizer
    assert np.all(np.diff(total) <= 0)


def test_recompute_and_sp_never_raise_activations() -> None:
    m = load_model("Llama-3.1-70B")
    w = TrainWorkload(global_batch=512, seq_len=8192, flash_attention=False)
    rows = table(Strategy(dp=8, tp=8), Strategy(dp=8, tp=8, sequence_parallel=True),
                 Strategy(dp=8, tp=8, sequence_parallel=True, recompute="selective"),
                 Strategy(dp=8, tp=8, sequence_parallel=True, recompute="full"))
    act = activation_bytes_per_layer(m, w, rows, moe=False)
    assert np.all(np.diff(act) < 0)


def test_tied_embeddings_cost_a_second_copy_only_with_pipelining(gpt3_175b) -> None:
    rows = table(Strategy(dp=1), Strategy(dp=1, pp=2))
    p = stage_params(gpt3_175b, rows)
    vh = gpt3_175b.vocab * gpt3_175b.hidden
    total = gpt3_175b.total_params()
    assert p["first"][0] == pytest.approx(total)
    assert p["first"][1] + p["last"][1] == pytest.approx(total + vh)


def test_zero3_unsharded_buffers_without_and_with_pp() -> None:
    """ZeRO-3 as FSDP2 runs it. Without PP: the LM head unit stays unsharded from its forward to its backward, its
    gradient exists unsharded before the reduce-scatter, and the next block is prefetched — 2 B x (2·head + layer).
    Under PP the stage's weights and gradients stay unsharded between micro-batches: 2 B + 2 B per stage parameter.
    With dp = 1 nothing is sharded, so nothing is gathered."""
    m = load_model("Llama-3.1-8B")
    w = TrainWorkload(global_batch=64, seq_len=2048)
    rows = table(Strategy(dp=8, zero=3), Strategy(dp=4, tp=2, zero=3), Strategy(dp=4, pp=2, zero=3),
                 Strategy(dp=1, pp=2, zero=3), Strategy(dp=8, zero=1))
    mem = memory_breakdown(m, w, rows)
    head = 128256 * 4096 + 4096                                 # vocab x hidden + final norm = 525,340,672
    layer = 4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336 + 2 * 4096  # = 218,112,000
    assert head == 525_340_672 and layer == 218_112_000
    stage = stage_params(m, rows)
    pp2_stage = stage["first"][2]   # embedding + 16 layers: the worst stage (it holds 2 micro-batches in flight)
    np.testing.assert_allclose(mem.buffers[:2], [2 * (2 * head + layer), 2 * (2 * head + layer) / 2], rtol=1e-12)
    assert mem.buffers[2] == pytest.approx(4 * pp2_stage, rel=1e-12)
    assert mem.buffers[3] == 0.0 and mem.buffers[4] == 0.0
