"""The published serving runs load into consistent specs; unusable rows are skipped with a reason."""

from __future__ import annotations

import csv
import io
import math
from importlib import resources
from pathlib import Path

import pytest

from meshplan.calibrate.published_serving import (
    KV_DTYPES,
    PRECISIONS,
    PublishedServingRun,
    SkippedServingRow,
    load_published_serving_runs,
)

SHARED_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "published-serving-runs.csv"
PACKAGED = resources.files("meshplan") / "data" / "published" / "serving-runs.csv"


@pytest.fixture(scope="module")
def loaded() -> tuple[list[PublishedServingRun], list[SkippedServingRow]]:
    return load_published_serving_runs()


@pytest.fixture(scope="module")
def runs(loaded) -> dict[str, PublishedServingRun]:
    return {r.id: r for r in loaded[0]}


@pytest.fixture(scope="module")
def skipped(loaded) -> dict[str, SkippedServingRow]:
    return {s.id: s for s in loaded[1]}


def _rows() -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(PACKAGED.read_text(encoding="utf-8"))))


@pytest.mark.skipif(not SHARED_CSV.is_file(), reason="shared reference data not present")
def test_packaged_csv_is_a_verbatim_copy() -> None:
    assert PACKAGED.read_bytes() == SHARED_CSV.read_bytes()


def test_most_rows_load_and_every_row_is_accounted_for(loaded, runs, skipped) -> None:
    ids = [row["id"] for row in _rows()]
    assert len(ids) == len(set(ids)) == 154
    assert len(runs) >= 120
    assert set(runs) | set(skipped) == set(ids) and not set(runs) & set(skipped)
    assert len(loaded[0]) + len(loaded[1]) == len(ids)


def test_every_skipped_row_has_a_reason(skipped) -> None:
    for row in skipped.values():
        assert row.reason.strip(), row.id


def test_only_models_without_a_representable_preset_are_skipped(skipped) -> None:
    # Llama-4-Maverick alternates dense and MoE layers, which ModelSpec cannot represent.
    assert set(skipped) == {r["id"] for r in _rows() if r["model"].startswith("Llama-4-Maverick")}
    assert all("no model preset" in s.reason for s in skipped.values())


def test_every_run_is_consistent(runs) -> None:
    groups = {"trtllm-0.17", "trtllm-pytorch", "trtllm-0.14-online", "aiconfigurator-trtllm", "aiconfigurator-vllm",
              "aiconfigurator-sglang", "splitwise"}
    for r in runs.values():
        assert r.source_group in groups, r.id
        assert r.num_gpus == r.tp * r.pp * r.attn_dp * r.replicas, r.id
        assert (r.tp * r.attn_dp) % r.ep == 0, r.id
        assert r.model.is_moe or r.ep == 1, r.id
        assert r.precision in PRECISIONS and r.kv_dtype in KV_DTYPES, r.id
        assert r.isl > 0 and r.osl > 0, r.id
        assert (r.concurrency is not None) or (r.request_rate is not None), r.id
        assert any(v is not None for v in (r.measured_ttft_ms, r.measured_tpot_ms,
                                           r.measured_output_tokens_per_s_total)), r.id
        if r.measured_output_tokens_per_s_total is not None:
            per_gpu = r.measured_output_tokens_per_s_total / r.num_gpus
            assert r.measured_output_tokens_per_s_per_gpu == pytest.approx(per_gpu, rel=1e-3), r.id


def test_kv_dtype_filled_only_with_a_note(runs) -> None:
    given = {row["id"]: row["kv_dtype"] for row in _rows()}
    for r in runs.values():
        if given[r.id]:
            assert r.kv_dtype == given[r.id]
        else:
            assert f"kv_dtype {r.kv_dtype} assumed" in r.notes, r.id


def test_trtllm_017_offline_row(runs) -> None:
    # trt017-llama31_70b-h100-tp8-500x2000: TP 8, 500/2000, 14679.33 tok/s in total, 1834.92 per GPU
    r = runs["trt017-llama31_70b-h100-tp8-500x2000"]
    assert r.source_group == "trtllm-0.17" and r.engine == "trtllm" and r.engine_version == "0.17"
    assert r.model.name == "Llama-3.1-70B" and r.gpu.name == "H100-SXM"
    assert (r.tp, r.pp, r.ep, r.attn_dp, r.replicas, r.num_gpus) == (8, 1, 1, 1, 1, 8)
    assert r.request_rate == math.inf and r.offline and r.concurrency is None
    assert (r.isl, r.osl) == (500, 2000)
    assert (r.precision, r.kv_dtype) == ("fp8", "fp8")
    assert r.measured_output_tokens_per_s_total == 14679.33
    assert r.measured_output_tokens_per_s_per_gpu == pytest.approx(14679.33 / 8, rel=1e-3)
    assert r.measured_ttft_ms is None and r.measured_tpot_ms is None
    assert not r.uncertain


def test_trtllm_017_a100_row_is_fp16(runs) -> None:
    r = runs["trt017-llama31_70b-a100-tp4-1000x1000"]
    assert r.gpu.name == "A100-80GB" and (r.precision, r.kv_dtype) == ("fp16", "fp16")
    assert r.measured_output_tokens_per_s_per_gpu == pytest.approx(1921.77 / 4, rel=1e-3)


def test_aiconfigurator_moe_row(runs) -> None:
    # Qwen3-235B-A22B FP8 on 8 H100, TensorRT-LLM: attention TP 8, EP 8 (moe_tp 1), attention_dp not recorded
    r = runs["aic-agg-qwen3-235b-h100-trtllm-fp8-tp8ep8-1024x512-c32"]
    assert r.source_group == "aiconfigurator-trtllm" and r.engine_version == "1.0.0rc3"
    assert r.model.name == "Qwen3-235B-A22B" and r.checkpoint_precision == "fp8"
    assert (r.tp, r.pp, r.ep, r.attn_dp, r.replicas, r.num_gpus) == (8, 1, 8, 1, 1, 8)
    assert r.num_gpus == r.tp * r.pp * r.attn_dp
    assert "attn_dp 1" in r.notes
    assert (r.isl, r.osl, r.concurrency, r.request_rate) == (1024, 512, 32, None)
    assert (r.measured_ttft_ms, r.measured_tpot_ms) == (257.62, 19.662)
    assert r.measured_output_tokens_per_s_total is None


def test_aiconfigurator_moe_row_with_attention_dp_column(runs) -> None:
    r = runs["aic-agg-dsr1-b200-trtllm-fp8-tp8-8192x1024-c16"]
    assert r.model.name == "DeepSeek-R1" and r.gpu.name == "B200"
    assert (r.tp, r.ep, r.attn_dp, r.num_gpus) == (8, 1, 1, 8)
    assert r.engine_version == "1.2.0rc6.post3"


def test_splitwise_row_is_uncertain(runs) -> None:
    r = runs["splitwise-llama2-70b-h100-tp8-bs8-512x128"]
    assert r.source_group == "splitwise" and r.uncertain and "UNCERTAIN" in r.notes
    assert r.engine == "unknown" and r.model.name == "Llama-2-70B"
    assert (r.tp, r.num_gpus, r.concurrency, r.request_rate) == (8, 8, 8, None)
    assert (r.isl, r.osl, r.measured_ttft_ms, r.measured_tpot_ms) == (512, 128, 371.63, 32.504)
    assert all(run.uncertain for run in runs.values() if run.source_group == "splitwise")


def test_online_rows_have_request_rates(runs) -> None:
    r = runs["trt014on-llama31_70b-h100-tp4-467x256-qps8"]
    assert r.source_group == "trtllm-0.14-online" and r.engine == "trtllm" and r.engine_version == "0.14.0"
    assert (r.request_rate, r.concurrency, r.precision, r.num_gpus) == (8.0, None, "bf16", 4)
    assert (r.measured_ttft_ms, r.measured_tpot_ms, r.measured_output_tokens_per_s_total) == (92, 32, 1860)
    assert runs["trt014on-llama31_70b-h100-tp4-467x256-qpsinf"].request_rate == math.inf


def test_trtllm_pytorch_moe_rows_are_marked_uncertain(runs) -> None:
    r = runs["trt10-qwen3_235b-h200-tp8-2048x2048"]
    assert r.uncertain and (r.tp, r.ep, r.attn_dp, r.num_gpus) == (1, 8, 8, 8)
    single = runs["trt10-qwen3_30b-b200-tp1-128x128"]
    assert not single.uncertain and (single.tp, single.ep, single.attn_dp, single.num_gpus) == (1, 1, 1, 1)
    dense = runs["trt10-llama33_70b-h100-tp2-128x2048"]
    assert not dense.uncertain and (dense.tp, dense.num_gpus) == (2, 2)
    assert dense.model.name == "Llama-3.3-70B" and dense.checkpoint_precision == "fp8"


def test_model_suffixes_map_to_presets(runs) -> None:
    r = runs["aic-agg-llama31-8b-nvfp8ckpt-h200-vllm-fp8-tp1-4000x500-c96"]
    assert r.model.name == "Llama-3.1-8B" and r.checkpoint_precision == "fp8"
    assert r.hf_model_id == "nvidia/Llama-3.1-8B-Instruct-FP8"
    assert runs["aic-agg-llama31-8b-h200-sglang-fp8-tp1-1000x1000-c352"].model.name == "Llama-3.1-8B"
    assert runs["trt017-mistral_7b-a100-tp1-1000x1000"].model.name == "Mistral-7B"
    assert runs["aic-agg-gptoss120b-b200-vllm-fp4-tp2-1024x8192-c4"].model.name == "gpt-oss-120b"
    assert runs["trt10-scout-h100-tp4-2048x128"].model.name == "Llama-4-Scout-17B-16E"


def test_unmodelled_attention_is_noted(runs) -> None:
    for r in runs.values():
        if r.model.name in ("gpt-oss-120b", "Mistral-7B"):  # sliding windows are in ModelSpec
            assert "APPROX model" not in r.notes and "sliding-window attention" in r.notes, r.id
            assert "modelled" in r.notes, r.id
        if r.model.name == "Llama-4-Scout-17B-16E":
            assert "full attention is exact here" in r.notes, r.id


def test_mlperf_style_llama2_rows_if_present(runs) -> None:
    """TP2 x 4 replicas on 8 H100 and TP1 x 8 on 8 H200 (MLPerf-style); the shipped CSV has none (all its
    Llama-2-70B rows are splitwise single-instance profiles), so the layouts are also checked on a synthetic file."""
    for r in runs.values():
        if r.model.name == "Llama-2-70B" and r.replicas > 1:
            assert r.num_gpus == r.tp * r.pp * r.replicas


# --- the loader on a synthetic file ------------------------------------------------------------------------------
_HEADER = _rows()[0].keys()


def _row(**values: str) -> dict[str, str]:
    base = {key: "" for key in _HEADER}
    base.update(engine="trtllm", engine_version="4.1", model="Llama-2-70B", params_b="70", moe="0", pp="1",
                disagg="0", precision="fp8", kv_dtype="fp8", isl="1024", osl="1024", request_rate="inf",
                measured_output_tokens_per_s_total="1000", notes="synthetic")
    base.update(values)
    return base


def _write(tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(_HEADER))
    writer.writeheader()
    writer.writerows(rows)
    path = tmp_path / "runs.csv"
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def test_replicated_layouts_and_bad_rows_on_a_synthetic_file(tmp_path: Path) -> None:
    rows = [
        _row(id="trt017-mlperf-h100-tp2x4", gpu="H100-SXM-80GB", num_gpus="8", tp="2", replicas="4"),
        _row(id="trt017-mlperf-h200-tp1x8", gpu="H200-SXM-141GB", num_gpus="8", tp="1", replicas="8",
             measured_output_tokens_per_s_per_gpu="125"),
        _row(id="trt017-bad-count", gpu="H100-SXM-80GB", num_gpus="8", tp="2", replicas="2"),
        _row(id="trt017-bad-per-gpu", gpu="H100-SXM-80GB", num_gpus="8", tp="8", replicas="1",
             measured_output_tokens_per_s_per_gpu="1000"),
        _row(id="trt017-disagg", gpu="H100-SXM-80GB", num_gpus="8", tp="4", replicas="1", disagg="1",
             prefill_workers="1", decode_workers="1"),
        _row(id="trt017-unknown-model", gpu="H100-SXM-80GB", num_gpus="1", tp="1", replicas="1", model="Nope-1B"),
        _row(id="trt017-unknown-gpu", gpu="TPU-v5p", num_gpus="1", tp="1", replicas="1"),
        _row(id="trt017-no-workload", gpu="H100-SXM-80GB", num_gpus="1", tp="1", replicas="1", request_rate=""),
        _row(id="mystery-1", gpu="H100-SXM-80GB", num_gpus="1", tp="1", replicas="1"),
    ]
    runs, skipped = load_published_serving_runs(_write(tmp_path, rows))
    by_id = {r.id: r for r in runs}
    assert set(by_id) == {"trt017-mlperf-h100-tp2x4", "trt017-mlperf-h200-tp1x8"}
    a = by_id["trt017-mlperf-h100-tp2x4"]
    assert (a.gpu.name, a.tp, a.replicas, a.num_gpus) == ("H100-SXM", 2, 4, 8)
    assert a.measured_output_tokens_per_s_per_gpu == pytest.approx(125.0)
    b = by_id["trt017-mlperf-h200-tp1x8"]
    assert (b.gpu.name, b.tp, b.replicas, b.num_gpus) == ("H200", 1, 8, 8)
    reasons = {s.id: s.reason for s in skipped}
    assert "tp*pp*attn_dp*replicas" in reasons["trt017-bad-count"]
    assert "per-GPU throughput" in reasons["trt017-bad-per-gpu"]
    assert "disaggregated" in reasons["trt017-disagg"]
    assert "no model preset" in reasons["trt017-unknown-model"]
    assert "TPU-v5p" in reasons["trt017-unknown-gpu"]
    assert "workload missing" in reasons["trt017-no-workload"]
    assert "no source family" in reasons["mystery-1"]
    assert all(reason.strip() for reason in reasons.values())
