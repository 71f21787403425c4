"""The efficiency fit: it recovers known factors, and the shipped factors reproduce published runs."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.calibrate.fit import Measurement, fit_efficiency, predict
from meshplan.calibrate.published import load_published_runs
from meshplan.cost.efficiency import Efficiency, default_efficiency
from meshplan.specs import TrainWorkload, load_gpu, load_model, make_cluster
from meshplan.strategy import Strategy


def _synthetic(truth: Efficiency) -> list[Measurement]:
    """Runs on two GPU generations whose 'measurements' are the model's own predictions under `truth`."""
    cases = [
        ("Llama-3.1-8B", "A100", 8, Strategy(dp=8, micro_batch=2), 8192, "bf16"),
        ("Llama-3.1-8B", "H100", 16, Strategy(dp=8, tp=2), 8192, "bf16"),
        ("Llama-3.1-70B", "H100", 64, Strategy(dp=4, tp=8, pp=2), 8192, "bf16"),
        ("Llama-3.1-70B", "A100", 64, Strategy(dp=4, tp=8, pp=2, recompute="full"), 4096, "bf16"),
        ("GPT-3-13B", "A100", 32, Strategy(dp=8, tp=4), 2048, "bf16"),
        ("GPT-3-13B", "H100", 32, Strategy(dp=16, tp=2), 2048, "fp8"),
        ("Llama-3.1-8B", "H100", 8, Strategy(dp=8), 32768, "bf16"),
        ("Mixtral-8x7B", "H100", 64, Strategy(dp=16, pp=4, ep=8), 4096, "fp8"),
    ]
    runs = []
    for i, (model, gpu, n, strategy, seq, precision) in enumerate(cases):
        m = load_model(model)
        c = make_cluster(load_gpu(gpu), n)
        w = TrainWorkload(global_batch=256, seq_len=seq, precision=precision)
        runs.append(Measurement(f"case{i}", m, c, w, strategy, 1.0))
    measured = predict(runs, truth)
    return [Measurement(r.id, r.model, r.cluster, r.workload, r.strategy, float(x)) for r, x in zip(runs, measured)]


def test_fit_recovers_the_factors_that_generated_the_data() -> None:
    truth = default_efficiency().model_copy(update={"gemm": {"ampere": 0.72, "hopper": 0.58}, "fp8_ratio": 0.8,
                                                     "attention_ratio": 0.5})
    start = truth.model_copy(update={"gemm": {"ampere": 0.5, "hopper": 0.5}, "fp8_ratio": 0.6, "attention_ratio": 0.7})
    result = fit_efficiency(_synthetic(truth), start, source="synthetic")
    got = result.efficiency
    assert got.gemm["ampere"] == pytest.approx(0.72, rel=0.01)
    assert got.gemm["hopper"] == pytest.approx(0.58, rel=0.01)
    assert got.fp8_ratio == pytest.approx(0.8, rel=0.02)
    assert got.attention_ratio == pytest.approx(0.5, rel=0.05)
    assert np.max(np.abs(result.error_after)) < 1e-3 < np.max(np.abs(result.error_before))


def test_too_few_runs_is_an_input_error() -> None:
    from meshplan.errors import PlanError

    runs = _synthetic(default_efficiency())[:2]
    with pytest.raises(PlanError, match="at least 3"):
        fit_efficiency(runs, default_efficiency(), source="x")


# Published anchors: the shipped factors against the sources whose runs the model is meant to reproduce
# (tokens/s per GPU; the README of the shared data says to validate on throughput, not on TFLOP/s).
ANCHOR_TOLERANCE = {  # max |predicted/measured - 1| per source family
    "narayanan21-ptdp": 0.15,  # Megatron-LM PTD-P, A100, 32 to 3072 GPUs
    "korthikanti22": 0.15,  # sequence parallel + selective recomputation
    "nemo2407": 0.15,  # NeMo 24.07 on H100, fp8, CP and interleaving
    "megatron-2020": 0.15,
}


@pytest.mark.parametrize("source", sorted(ANCHOR_TOLERANCE))
def test_published_runs_within_tolerance(source: str) -> None:
    runs, _ = load_published_runs()
    chosen = [r for r in runs if r.source_group == source]
    assert chosen
    meas = [Measurement(r.id, r.model, r.cluster, r.workload, r.strategy, r.measured_tokens_per_s_per_gpu) for r in chosen]
    err = predict(meas, default_efficiency()) / np.array([m.tokens_per_s_per_gpu for m in meas]) - 1
    worst = int(np.argmax(np.abs(err)))
    assert abs(err[worst]) <= ANCHOR_TOLERANCE[source], f"{meas[worst].id}: {err[worst]:+.1%}"


def test_shipped_factors_are_physical() -> None:
    eff = default_efficiency()
    assert all(0.4 <= v <= 0.9 for v in eff.gemm.values())
    assert 0 < eff.attention_ratio <= 1 and 0 < eff.fp8_ratio <= 1
    assert "published training runs" in eff.source
