"""`meshplan shard`: JSON and table output from a Hugging Face config.json, the plan file, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from meshplan.cli.main import app
from meshplan.shard.apply import read_shard_plan

runner = CliRunner()
HF = Path(__file__).parent / "data" / "hf_configs" / "llama-3.1-8b.json"


@pytest.fixture(scope="module")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Llama-3.1-8B's config.json cut to 4 layers of hidden 2048 (16 heads of 128, 8 KV heads)."""
    cfg = json.loads(HF.read_text())
    cfg.update(num_hidden_layers=4, hidden_size=2048, intermediate_size=6144, num_attention_heads=16, vocab_size=32000)
    path = tmp_path_factory.mktemp("hf") / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_json_plan_from_a_config_json(small_config: str, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    r = runner.invoke(app, ["shard", "--model", small_config, "--mesh", "2", "--global-batch", "4", "--seq-len", "1024",
                            "--json", "--out", str(out)])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    res = plan["result"]
    assert plan["kind"] == "shard" and res["num_layers"] == 4 and res["num_layer_classes"] == 1
    strategies = {op["name"]: op["strategy"] for op in res["ops"]}
    assert strategies["layers_0_feed_forward_w13"] == "column@0" and strategies["layers_0_feed_forward_w2"] == "row@0"
    assert res["step_time_s"] == pytest.approx(res["compute_s"] + res["comm_s"] + res["reshard_s"])
    assert read_shard_plan(out).executable is not None  # the file `meshplan run` reads
    assert "wrote" in r.stderr


def test_tables_and_pipeline_stages(small_config: str) -> None:
    r = runner.invoke(app, ["shard", "--model", small_config, "--mesh", "2x2", "--global-batch", "8", "--seq-len",
                            "512", "--microbatches", "4"])
    assert r.exit_code == 0, r.output
    for title in ("strategy per operator", "collectives per step", "pipeline stages, 4 micro-batches",
                  "predicted step time", "memory per device"):
        assert title in r.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--mesh", "2x"], "--mesh '2x' is not a mesh shape"),
    (["--mesh", "2x2x2"], "1D or 2D mesh"),
    (["--model", "Llama-9"], "unknown model"),
    (["--memory", "0.01"], "GB more); raise --memory"),
    (["--microbatches", "3"], "--microbatches 3 must be positive and divide --global-batch 8"),
    (["--dtype", "fp8"], "--dtype 'fp8' is not bf16 or fp32"),
    (["--mesh", "2x0"], "--mesh '2x0' has an axis of size 0 or less"),
    (["--out", "/nonexistent-qa/s.json"], "cannot write --out '/nonexistent-qa/s.json'"),  # was a traceback
    (["--gpus-per-node", "0"], "--gpus-per-node 0: Input should be greater than 0"),  # was a traceback
    (["--time-limit", "-1"], "--time-limit -1.0: Input should be greater than 0"),  # was a traceback
])
def test_bad_input_is_one_line_and_exit_2(small_config: str, args: list[str], message: str) -> None:
    base = {"--model": small_config, "--mesh": "2", "--global-batch": "8", "--seq-len": "512"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    r = runner.invoke(app, ["shard", *[x for kv in base.items() for x in kv]])
    assert r.exit_code == 2, r.output
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_options() -> None:
    r = runner.invoke(app, ["shard", "--mesh", "2"])
    assert r.exit_code == 2 and "missing --model" in r.stderr


def test_pipelining_fits_where_the_whole_batch_does_not(small_config: str, tmp_path: Path) -> None:
    # 3 GB per device: the whole batch of 8 needs 3.93 GB at the leanest; 4 micro-batches of 2 fit.
    args = ["shard", "--model", small_config, "--mesh", "2", "--global-batch", "8", "--seq-len", "512",
            "--microbatches", "4", "--memory", "3"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "without pipeline stages: the memory bound 3.00 GB" in r.stdout and "pipeline stages, 4 micro-batches" in r.stdout
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "p.json")])
    assert r.exit_code == 2 and "--out writes a plan without pipeline stages" in r.stderr
