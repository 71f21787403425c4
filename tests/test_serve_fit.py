"""The shipped serving factors: physical, fitted to the published runs, and predicting them."""

from __future__ import annotations

import numpy as np

from meshplan.calibrate.published_serving import load_published_serving_runs
from meshplan.serve.efficiency import default_serving_efficiency
from meshplan.serve.fit import METRICS, predict_run


def test_factors_are_physical_and_say_where_they_come_from() -> None:
    eff = default_serving_efficiency()
    assert "published serving runs" in eff.source
    assert all(0.3 <= v <= 0.9 for v in eff.compute.values())
    assert 0.5 <= eff.hbm <= 0.95  # STREAM-like kernels reach ~0.8-0.9 of datasheet HBM bandwidth
    assert all(0.0 <= v <= 0.01 for v in eff.iteration_overhead_s.values())  # a few ms per iteration at most


def test_published_runs_are_predicted() -> None:
    # Regression guard on the accuracy benchmark (benchmarks/serving_accuracy.py): medians per metric on the
    # rows the fit used; a change of the cost model that breaks the fit fails here.
    runs, _ = load_published_serving_runs()
    eff = default_serving_efficiency()
    errors: dict[str, list[float]] = {m: [] for m in METRICS}
    for run in runs:
        if run.uncertain:
            continue
        pred = predict_run(run, eff)
        for m in METRICS:
            if pred.measured[m]:
                errors[m].append(abs(pred.predicted[m] / pred.measured[m] - 1.0))
    assert np.median(errors["throughput"]) < 0.15
    assert np.median(errors["tpot"]) < 0.2
    assert np.median(errors["ttft"]) < 0.3
    assert len(errors["throughput"]) >= 70 and len(errors["tpot"]) >= 70 and len(errors["ttft"]) >= 60


def test_triton_backend_rows_schedule_what_the_engine_was_built_for() -> None:
    # TensorRT-LLM 0.14's online rows ran through Triton, before trtllm-serve (batch limit 256) existed. By Little's
    # law their decode batch exceeds 256: Llama-3.1-70B TP4 467x256 at 32 req/s made 4083 tok/s at 86 ms per token,
    # 4083 x 0.086 = 351 sequences decoding on average. They get trtllm-build's max_batch_size 2048; AIConfigurator's
    # TensorRT-LLM rows keep trtllm-serve's 256.
    from meshplan.serve.fit import run_inputs

    runs = {r.id: r for r in load_published_serving_runs()[0]}
    online = runs["trt014on-llama31_70b-h100-tp4-467x256-qps32"]
    assert online.measured_output_tokens_per_s_total * online.measured_tpot_ms / 1e3 > 256
    assert run_inputs(online)[0].max_batch == 2048
    assert run_inputs(runs["aic-agg-llama31-70b-h200-trtllm-fp8-tp2-1024x1024-c4"])[0].max_batch == 256
    # closed-loop rows whose request count no source states are measured after a warm-up of one per client
    aic = run_inputs(runs["aic-agg-llama31-70b-h200-trtllm-fp8-tp2-1024x1024-c64"])[1]
    assert aic.warmup_requests == 64 and aic.num_requests == 640
