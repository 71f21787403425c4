"""Serving mode of `meshplan run`: CPU processes with tensor parallelism agree with one process, and the
prediction from a measured profile follows the roofline by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshplan.cli.main import app
from meshplan.serve.local import predict_static_batch
from meshplan.specs.model import ModelSpec

TINY = ModelSpec(name="tiny-serve", num_layers=2, hidden=256, ffn_hidden=512, num_heads=4, num_kv_heads=2,
                 head_dim=64, vocab=1024, gated_mlp=True, tied_embeddings=False)


def test_prediction_from_a_profile_by_hand() -> None:
    # tp 1, no overheads: decode of 4 sequences is memory-bound: the weights but the embedding, 2 bytes each,
    # over 1e10 B/s, plus the KV cache of 4 x (64 + 8) tokens x 2 layers x 2 x 2 heads x 64 x 2 bytes.
    profile = {"gemm_flops": 1e12, "memory_bytes_per_s": 1e10, "op_overhead_s": 0.0, "ops_per_iteration": 0.0}
    _, tpot = predict_static_batch(TINY, 1, 4, 64, 16, profile)
    weights = (TINY.total_params() - TINY.embedding_params()) * 2.0
    kv = 4 * (64 + 8) * 2 * 2 * 2 * 64 * 2.0
    assert tpot == pytest.approx((weights + kv) / 1e10, rel=1e-9)
    # prefill of 4 x 64 tokens is compute-bound at 1e11 FLOP/s: 2 FLOPs per non-embedding weight per token
    # (LM head on the last token only is below the weight-read time) plus attention 2(q+o)·32 per token·layer
    slow = {**profile, "gemm_flops": 1e11}
    ttft, _ = predict_static_batch(TINY, 1, 4, 64, 16, slow)
    linear = 2.0 * (TINY.total_params() - TINY.embedding_params() - TINY.vocab * TINY.hidden) * 256 / 1e11
    attention = 256 * 32 * 2.0 * (256 + 256) * 2 / 1e11
    assert ttft == pytest.approx(linear + attention, rel=1e-9)


@pytest.mark.multiprocess
def test_cpu_serving_run_matches_one_process(tmp_path: Path) -> None:
    runner = CliRunner()
    plan = tmp_path / "serve.json"
    made = runner.invoke(app, ["serve", "--model", "Llama-3.1-8B", "--gpu", "H100", "--num-gpus", "2", "--tp", "2",
                               "--isl", "256", "--osl", "64", "--concurrency", "4", "--estimate", "--out", str(plan)])
    assert made.exit_code == 0, made.output
    out = runner.invoke(app, ["run", str(plan), "--model", "tiny", "--nproc", "2", "--steps", "4", "--seq-len", "32",
                              "--global-batch", "2", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    # bf16 weights and activations: the tp=2 partial sums round differently, ~1e-2 relative at most
    assert data["first_logits_max_rel_diff"] is not None and data["first_logits_max_rel_diff"] < 5e-2
    assert data["world_size"] == 2 and data["config"]["tp"] == 2
    assert data["ttft_s"] > 0 and data["tpot_s"] > 0 and data["predicted_ttft_s"] > 0 and data["predicted_tpot_s"] > 0
    for key in ("gemm_flops", "memory_bytes_per_s", "allreduce_latency_s", "allreduce_bytes_per_s"):
        assert data["profile"][key] > 0
