"""`meshplan plan`: tables, JSON, Plan files that re-price to the same figures, explain, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshplan.cli.main import app
from meshplan.errors import PlanError
from meshplan.plan import read_plan, reprice
from meshplan.planning import parse_count, parse_sizes

runner = CliRunner()
BASE = ["plan", "--model", "Llama-3.1-8B", "--gpu", "H100", "--num-gpus", "16", "--global-batch", "64",
        "--seq-len", "4096"]


def run(*args: str):
    return runner.invoke(app, list(args))


def test_plan_table_and_pruning_summary() -> None:
    r = run(*BASE, "--top-k", "3")
    assert r.exit_code == 0, r.output
    assert "top 3 by throughput" in r.stdout
    assert "strategies enumerated" in r.stdout and "pruned:" in r.stdout


def test_out_plan_reprices_to_the_same_figures(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    r = run(*BASE, "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    listed = json.loads(r.stdout)["results"][0]["ranked"][0]
    plan = read_plan(out)
    assert plan.schema_version == 1 and plan.strategy.model_dump() == listed["strategy"]
    again = reprice(plan)
    assert again.step_time_s == pytest.approx(plan.estimate.step_time_s, rel=1e-12)
    assert again.peak_memory_bytes == pytest.approx(plan.estimate.peak_memory_bytes, rel=1e-12)
    r = run("estimate", "--plan", str(out), "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["tokens_per_s"] == pytest.approx(listed["tokens_per_s"], rel=1e-12)


def test_plan_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    r = run("estimate", "--plan", str(bad))
    assert r.exit_code == 2 and "not a meshplan plan" in r.stderr
    r = run("estimate", "--plan", str(tmp_path / "missing.json"))
    assert r.exit_code == 2 and "does not exist" in r.stderr
    good = tmp_path / "p.json"
    assert run(*BASE, "--out", str(good)).exit_code == 0
    data = json.loads(good.read_text())
    data["schema_version"] = 99
    bad.write_text(json.dumps(data))
    r = run("estimate", "--plan", str(bad))
    assert r.exit_code == 2 and "schema_version=99" in r.stderr


def test_several_sizes_with_time_and_cost() -> None:
    r = run("plan", "--model", "Llama-3.1-70B", "--gpu", "H100", "--num-gpus", "64,128", "--global-batch", "512",
            "--seq-len", "8192", "--train-tokens", "15T", "--gpu-hour-price", "2.5", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [x["num_gpus"] for x in out["results"]] == [64, 128]
    r = run("plan", "--model", "Llama-3.1-70B", "--gpu", "H100", "--num-gpus", "64,128", "--global-batch", "512",
            "--seq-len", "8192", "--train-tokens", "15T", "--gpu-hour-price", "2.5", "--top-k", "2")
    assert "best plan per cluster size" in r.stdout and "days to train" in r.stdout and "$" in r.stdout


def test_min_gpus_objective_picks_the_smallest_size_that_reaches_the_target() -> None:
    common = ["plan", "--model", "Llama-3.1-8B", "--gpu", "H100", "--num-gpus", "8,16,32", "--global-batch", "256",
              "--seq-len", "4096", "--objective", "min-gpus", "--json"]
    r = run(*common, "--target-tokens-per-s", "150000")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    best = {x["num_gpus"]: x["ranked"][0]["tokens_per_s"] for x in out["results"]}
    reaching = [n for n in sorted(best) if best[n] >= 150000]
    assert out["chosen_num_gpus"] == reaching[0]
    r = run(*common, "--target-tokens-per-s", "1e9")
    assert r.exit_code == 1 and json.loads(r.stdout)["chosen_num_gpus"] is None


def test_nothing_fits_says_what_would() -> None:
    r = run("plan", "--model", "Llama-3.1-405B", "--gpu", "H100", "--num-gpus", "8", "--global-batch", "8",
            "--seq-len", "8192")
    assert r.exit_code == 1
    assert "nothing fits" in r.stdout and "smallest footprint" in r.stdout and "--num-gpus" in r.stdout


def test_explain_names_terms() -> None:
    r = run(*BASE, "--explain", "--top-k", "4")
    assert r.exit_code == 0
    text = r.stdout
    assert "why the winner wins" in text and "#2" in text and "step time" in text


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--tp", "3"], "--tp 3 does not divide num_gpus=16"),
        (["--no-cp", "--cp", "2"], "--no-cp contradicts --cp 2"),
        (["--tp", "8", "--max-tp", "4"], "--tp 8 contradicts --max-tp 4"),
        (["--objective", "min-gpus"], "needs --target-tokens-per-s"),
        (["--gpu-hour-price", "2"], "needs --train-tokens"),
        (["--memory-headroom", "1.5"], "memory_headroom"),
        (["--objective", "fastest"], "objective"),
        (["--train-tokens", "lots"], "not a count"),
        (["--ep", "2"], "no strategy is valid on 16 GPUs"),
    ],
)
def test_bad_plan_input_is_one_line_exit_2(extra: list[str], needle: str) -> None:
    r = run(*BASE, *extra)
    assert r.exit_code == 2, r.output
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_global_batch_smaller_than_dp_is_an_input_error() -> None:
    r = run("plan", "--model", "Llama-3.1-8B", "--gpu", "H100", "--num-gpus", "64", "--global-batch", "4",
            "--seq-len", "4096", "--dp", "64")
    assert r.exit_code == 2 and "--dp 64 exceeds --global-batch 4" in r.stderr
    r = run("estimate", "--model", "Llama-3.1-8B", "--gpu", "H100", "--num-gpus", "64", "--global-batch", "4",
            "--seq-len", "4096")
    assert r.exit_code == 2 and "global batch smaller than dp*micro_batch" in r.stderr


def test_count_and_size_parsing() -> None:
    assert parse_count("15T", "x") == 15e12 and parse_count("300B", "x") == 300e9 and parse_count("2.5e12", "x") == 2.5e12
    assert parse_sizes("128,64,64") == [64, 128]
    with pytest.raises(PlanError):
        parse_sizes("64,abc")


def test_top_k_zero_lists_every_plan_that_fits() -> None:
    r = run("plan", "--model", "Llama-3.1-8B", "--gpu", "H100", "--num-gpus", "8", "--global-batch", "16",
            "--seq-len", "2048", "--tp", "2", "--pp", "1", "--cp", "1", "--top-k", "0", "--json")
    assert r.exit_code == 0
    res = json.loads(r.stdout)["results"][0]
    assert len(res["ranked"]) == res["strategies_fitting"] > 10
