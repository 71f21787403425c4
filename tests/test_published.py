"""The published training runs load into valid specs, with throughputs derived as each source counts them."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import pytest

from meshplan.calibrate.published import (
    PublishedRun,
    load_published_runs,
    megatron_core_flops_per_token,
    narayanan_flops_per_token,
)
from meshplan.strategy import check_strategy

SHARED_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "published-training-runs.csv"


@pytest.fixture(scope="module")
def loaded() -> tuple[list[PublishedRun], list]:
    return load_published_runs()


@pytest.fixture(scope="module")
def runs(loaded) -> dict[str, PublishedRun]:
    return {r.id: r for r in loaded[0]}


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, str]]:
    text = (resources.files("meshplan") / "data" / "published" / "training-runs.csv").read_text(encoding="utf-8")
    return {r["id"]: r for r in csv.DictReader(text.splitlines())}


def test_every_row_is_loaded_or_skipped_with_a_reason(loaded, rows) -> None:
    runs, skipped = loaded
    assert len(runs) >= 80
    assert len(runs) + len(skipped) == len(rows) == 98
    assert all(s.reason.strip() for s in skipped)
    assert len({r.id for r in runs} | {s.id for s in skipped}) == 98


def test_skipped_rows_are_the_ones_without_a_usable_layout(loaded) -> None:
    skipped = {s.id: s.reason for s in loaded[1]}
    for run_id in ("mcore08-h100-177b-strong-96", "mcore08-h100-177b-strong-4608",
                   "korthikanti22-530b-2240-seqsel", "korthikanti22-530b-2240-full"):
        assert "layout missing" in skipped[run_id]


def test_every_strategy_passes_check_strategy(loaded) -> None:
    for r in loaded[0]:
        check_strategy(r.strategy, r.model, r.cluster, r.workload)
        assert r.strategy.num_gpus == r.cluster.num_gpus
        assert r.measured_tokens_per_s_per_gpu > 0
        assert r.tokens_derivation


def test_uncertain_rows_are_flagged(runs, rows) -> None:
    for run_id, row in rows.items():
        if "UNCERTAIN" in row["notes"] and run_id in runs:
            assert runs[run_id].uncertain
    assert runs["mcore-moe-mixtral-8x7b-64g"].uncertain
    assert not runs["nemo2407-llama3-70b-64g"].uncertain


def test_narayanan_1t_tokens_from_tflops_with_eq3(runs) -> None:
    r = runs["narayanan21-t1-1t"]
    # l=128, h=25600, s=2048, V=51200:
    # 96·l·h² = 96·128·655,360,000 = 8.0531e12
    # 1 + s/(6h) + V/(16·l·h) = 1 + 2048/153,600 + 51,200/52,428,800 = 1 + 0.013333 + 0.000977 = 1.014310
    # per token 8.0531e12 · 1.014310 = 8.1684e12 FLOPs  ->  163e12 / 8.1684e12 = 19.955 tokens/s per GPU
    per_token = 96 * 128 * 25600**2 * (1 + 2048 / (6 * 25600) + 51200 / (16 * 128 * 25600))
    assert r.measured_tokens_per_s_per_gpu == pytest.approx(163e12 / per_token, rel=1e-12)
    assert r.measured_tokens_per_s_per_gpu == pytest.approx(19.955, abs=0.01)
    assert r.tokens_derivation.startswith("TFLOP/s / (flops per token, Narayanan")
    assert r.strategy.recompute == "full" and r.strategy.zero == 0 and not r.workload.flash_attention


def test_megatron_2020_tokens_from_step_time(runs) -> None:
    r = runs["mlm2020-a100dp-8b"]
    # global batch 2048 x seq 1024 / 1.38 s / 1024 GPUs = 1484.1 tokens/s per GPU
    assert r.measured_tokens_per_s_per_gpu == pytest.approx(2048 * 1024 / 1.38 / 1024, rel=1e-12)
    assert r.tokens_derivation == "global_batch*seq/step_time/num_gpus"
    assert (r.strategy.dp, r.strategy.tp, r.strategy.micro_batch) == (128, 8, 16)


def test_nemo_tokens_are_used_unchanged(runs) -> None:
    r = runs["nemo2407-llama3-70b-64g"]
    assert r.measured_tokens_per_s_per_gpu == 1524.0
    assert r.tokens_derivation == "published tokens/s"
    assert r.workload.precision == "fp8" and r.workload.flash_attention
    s = r.strategy
    assert (s.tp, s.pp, s.cp, s.dp, s.vpp, s.schedule, s.zero) == (4, 4, 2, 2, 5, "interleaved", 1)
    assert s.sequence_parallel


@pytest.mark.parametrize("run_id", ["mlm2020-v100-1b", "mlm2020-a100-4b", "mlm2020-a100dp-8b",
                                    "mtnlg530b-2240g", "mtnlg530b-3360g"])
def test_step_time_rows_reproduce_the_recompute_inclusive_tflops(runs, rows, run_id) -> None:
    """Megatron 2020 and MT-NLG TFLOP/s are eq. 3 (factor 4, recompute) at the published step time."""
    r = runs[run_id]
    tflops = r.measured_tokens_per_s_per_gpu * narayanan_flops_per_token(r.model, r.workload.seq_len) / 1e12
    assert tflops == pytest.approx(float(rows[run_id]["measured_tflops_per_gpu"]), rel=0.01)


@pytest.mark.parametrize("run_id", ["nemo2407-gpt3-5b-64g", "nemo2407-llama2-7b-8g", "nemo2407-llama3-8b-8g",
                                    "nemo2407-nemotron-22b-64g", "nemo2407-nemotron-340b-128g"])
def test_nemo_tflops_are_megatron_core_model_flops(runs, rows, run_id) -> None:
    """NeMo's 'Model TFLOP/sec/GPU' is tokens/s x Megatron-Core's count (which also pins the assumed vocabularies)."""
    r = runs[run_id]
    tflops = r.measured_tokens_per_s_per_gpu * megatron_core_flops_per_token(r.model, r.workload.seq_len) / 1e12
    assert tflops == pytest.approx(float(rows[run_id]["measured_tflops_per_gpu"]), rel=0.01)


def test_korthikanti_mfu_matches_step_time(runs, rows) -> None:
    """Korthikanti 2022's MFU is model FLOPs (72·l·h²·(1 + s/6h + V/12lh) per token) over the 312 TFLOP/s peak."""
    for run_id in ("korthikanti22-175b-seqsel", "korthikanti22-530b-seqsel", "korthikanti22-1t-seqsel"):
        r = runs[run_id]
        mfu = r.measured_tokens_per_s_per_gpu * megatron_core_flops_per_token(r.model, 2048) / 312e12 * 100
        assert mfu == pytest.approx(float(rows[run_id]["measured_mfu"]), abs=0.5)
        assert r.strategy.recompute == "selective" and r.strategy.sequence_parallel


@pytest.mark.parametrize("run_id", ["narayanan21-t2-ptdp-174b-384", "narayanan21-t2-zero3-174b-768",
                                    "korthikanti22-175b-full", "nemo2407-gpt3-175b-128g", "opt175b-992g"])
def test_175b_parameter_count(runs, run_id) -> None:
    assert runs[run_id].model.total_params() == pytest.approx(174.6e9, rel=0.01)


def test_other_parameter_counts(runs) -> None:
    published = {  # id: (parameters as the source prints them, tolerance)
        "narayanan21-t1-1t": (1008.0e9, 0.005), "narayanan21-t1-310b": (310.1e9, 0.005),
        "mtnlg530b-2240g": (529.6e9, 0.005), "mcore08-h100-1.7b": (1.7e9, 0.03),
        "mcore08-h100-462b": (462e9, 0.005), "nemo2407-llama2-70b-64g": (68.98e9, 0.005),
        "mcore-moe-mixtral-8x7b-64g": (46.7e9, 0.005), "llmfoundry-h100-80gb-amp_bf16-7b-s65536-8g": (6.919e9, 0.002),
        "llmfoundry-h100-80gb-amp_bf16-13b-s2048-8g": (12.854e9, 0.002), "bigscience-tr8-104b-v100-baseline": (104e9, 0.01),
    }
    for run_id, (params, tol) in published.items():
        assert runs[run_id].model.total_params() == pytest.approx(params, rel=tol), run_id


def test_bloom_176b_loads_with_its_uneven_pipeline(loaded) -> None:
    """70 layers on 12 stages: BigScience put 5 layers (+ embedding) on the first and last stage, 6 elsewhere."""
    from meshplan.cost.stages import stage_layers
    from meshplan.strategy import StrategyTable

    runs = {r.id: r for r in loaded[0]}
    run = runs["bloom176b-production-epoch1"]
    assert run.model.total_params() == pytest.approx(176.2e9, rel=0.01)
    layers = stage_layers(run.model.num_layers, StrategyTable.from_strategies([run.strategy]))
    assert (layers.first[0], layers.middle[0], layers.last[0]) == (5, 6, 5)


def test_families_follow_their_sources(runs) -> None:
    assert runs["mlm2020-v100-2b"].cluster.gpus_per_node == 16
    assert runs["mlm2020-v100-2b"].workload.precision == "fp16"
    tr8 = runs["bigscience-tr8-104b-v100-baseline"]
    assert tr8.cluster.gpus_per_node == 4 and tr8.measured_memory_bytes == 30e9
    assert runs["llmfoundry-a100-40gb-bf16-7b-s2048-128g"].cluster.gpu.name == "A100-40GB"
    assert runs["llmfoundry-a100-40gb-bf16-7b-s2048-128g"].cluster.inter_node_bytes_per_s == 25e9
    assert runs["narayanan21-t1-310b"].model.num_heads == 128
    assert runs["korthikanti22-22b-full"].strategy.recompute == "full"
    assert not runs["korthikanti22-22b-full"].strategy.sequence_parallel
    assert runs["mcore08-h100-70b"].strategy.sequence_parallel and runs["mcore08-h100-70b"].strategy.zero == 1
    assert runs["nemo2407-llama2-70b-64g"].model.gated_mlp
    assert not runs["nemo2407-nemotron-340b-128g"].model.gated_mlp  # squared ReLU
    assert runs["opt175b-992g"].uncertain


@pytest.mark.skipif(not SHARED_CSV.is_file(), reason="shared reference data not present (clean clone)")
def test_packaged_csv_is_a_verbatim_copy() -> None:
    packaged = (resources.files("meshplan") / "data" / "published" / "training-runs.csv").read_bytes()
    assert packaged == SHARED_CSV.read_bytes()
