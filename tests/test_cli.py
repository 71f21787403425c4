"""The command line: output, JSON, batch mode and one-line errors with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshplan import estimate
from meshplan.cli.main import app

runner = CliRunner()
BASE = ["estimate", "--model", "Llama-3.1-70B", "--gpu", "H100", "--num-gpus", "64", "--global-batch", "512",
        "--seq-len", "8192", "--tp", "8", "--pp", "2"]


def run(*args: str):
    return runner.invoke(app, list(args))


def test_estimate_json_has_the_promised_keys_and_matches_the_api() -> None:
    r = run(*BASE, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for key in ("step_time_s", "tokens_per_s", "tokens_per_s_per_gpu", "mfu", "tflops_per_gpu", "peak_memory_bytes",
                "fits", "breakdown", "memory_breakdown", "provenance"):
        assert key in out
    assert out["strategy"]["dp"] == 4 and out["strategy"]["sequence_parallel"] is True
    api = estimate(model="Llama-3.1-70B", gpu="H100", num_gpus=64, global_batch=512, seq_len=8192, tp=8, pp=2)
    assert out["step_time_s"] == pytest.approx(api.step_time_s, rel=1e-12)
    assert sum(out["breakdown"].values()) == pytest.approx(out["step_time_s"])
    assert sum(out["memory_breakdown"].values()) == pytest.approx(out["peak_memory_bytes"])


def test_estimate_table_output() -> None:
    r = run(*BASE)
    assert r.exit_code == 0
    assert "Llama-3.1-70B on 64 x H100-SXM" in r.stdout and "step time breakdown" in r.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "llama-3.1-7b"], "unknown model 'llama-3.1-7b'. Did you mean"),
        (["--gpu", "H10"], "unknown GPU 'H10'"),
        (["--num-gpus", "-8"], "num_gpus=-8"),
        (["--num-gpus", "60"], "num_gpus=60 is not a whole number of nodes of gpus_per_node=8"),
        (["--num-gpus", "72"], "tp*pp*cp=16 does not divide num_gpus=72"),
        (["--tp", "3"], "tp*pp*cp=6 does not divide"),
        (["--dp", "2"], "dp*tp*pp*cp=32, num_gpus=64"),
        (["--global-batch", "0"], "global_batch=0"),
        (["--recompute", "some"], "recompute='some'"),
        (["--precision", "int4"], "precision='int4'"),
        (["--model", "/nonexistent/config.json"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    argv = list(BASE)
    for flag, value in zip(args[::2], args[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    r = run(*argv)
    assert r.exit_code == 2
    assert needle in r.stderr
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1


def test_heads_not_divisible_and_v100_bf16(tmp_path: Path) -> None:
    r = run("estimate", "--model", "GPT-3-2.7B", "--gpu", "A100", "--num-gpus", "6", "--gpus-per-node", "6",
            "--global-batch", "6", "--seq-len", "2048", "--tp", "6")
    assert r.exit_code == 2 and "heads not divisible by tp (heads=32, tp=6)" in r.stderr
    r = run("estimate", "--model", "GPT-3-2.7B", "--gpu", "V100", "--num-gpus", "8", "--global-batch", "8",
            "--seq-len", "2048")
    assert r.exit_code == 2 and "no bf16" in r.stderr and "--precision" in r.stderr


def test_non_config_json_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text('{"hello": 1}')
    r = run(*BASE[:2], str(bad), *BASE[3:])
    assert r.exit_code == 2 and "model_type" in r.stderr
    bad.write_text("not json")
    r = run(*BASE[:2], str(bad), *BASE[3:])
    assert r.exit_code == 2 and "not valid JSON" in r.stderr


def test_non_integer_number_is_a_usage_error() -> None:
    argv = list(BASE)
    argv[argv.index("--tp") + 1] = "2.5"
    r = run(*argv)
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_missing_required_flags() -> None:
    r = run("estimate", "--model", "Llama-3.1-8B")
    assert r.exit_code == 2 and "--gpu" in r.stderr and "--num-gpus" in r.stderr


def test_batch_mode_keeps_order_and_reports_bad_lines(tmp_path: Path) -> None:
    lines = [
        {"model": "Llama-3.1-8B", "gpu": "H100", "num_gpus": 8, "global_batch": 64, "seq_len": 8192, "tp": 2},
        {"model": "Llama-3.1-8B", "gpu": "H100", "num_gpus": 8, "global_batch": 64, "seq_len": 8192, "tp": 3},
        "not json",
        {"model": "GPT-3-175B", "gpu": "A100", "num_gpus": 1024, "global_batch": 1536, "seq_len": 2048, "tp": 8,
         "pp": 16, "recompute": "full", "precision": "fp16"},
        {"model": "Llama-3.1-8B", "gpu": "H100", "num_gpus": "eight", "global_batch": 64, "seq_len": 8192},
    ]
    f = tmp_path / "requests.jsonl"
    f.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    r = run("estimate", "--batch", str(f))
    assert r.exit_code == 0
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(out) == 5
    assert out[0]["strategy"]["dp"] == 4 and "error" not in out[0]
    assert "tp*pp*cp=3" in out[1]["error"]
    assert "JSON" in out[2]["error"]
    assert out[3]["strategy"]["dp"] == 8 and out[3]["fits"] is True
    assert "num_gpus" in out[4]["error"]


def test_catalog_commands() -> None:
    r = run("models", "--json")
    assert r.exit_code == 0
    names = {m["name"]: m for m in json.loads(r.stdout)}
    assert names["Llama-2-7B"]["total_params"] == 6_738_415_616
    r = run("gpus", "--json")
    gpus = {g["name"]: g for g in json.loads(r.stdout)}
    assert gpus["H100-SXM"]["peak_flops"]["bf16"] == pytest.approx(989e12, rel=0.01)
    assert run("models").exit_code == 0 and run("gpus").exit_code == 0


def test_run_without_torch_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    plan = tmp_path / "plan.json"
    assert run("plan", "--model", "Llama-3.1-8B", "--gpu", "H100", "--num-gpus", "8", "--global-batch", "64",
               "--seq-len", "4096", "--out", str(plan)).exit_code == 0
    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    r = run("run", str(plan), "--model", "tiny")
    assert r.exit_code == 2 and "pip install 'meshplan[run]'" in r.stderr


def test_estimate_batch_of_no_requests_exits_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = run("estimate", "--batch", str(empty))
    assert r.exit_code == 2 and f"--batch '{empty}' holds no requests" in r.stderr


@pytest.mark.parametrize(("args", "needle"), [
    # found by the QA pass: a plan or batch file silently overrode the request flags given beside it
    (["--plan", "p.json", "--model", "GPT-3-1.3B", "--hardware", "hw.json"], "would ignore --model, --hardware"),
    (["--plan", "p.json", "--batch", "b.jsonl"], "--plan takes the whole request from its file and would ignore --batch"),
    (["--batch", "b.jsonl", "--num-gpus", "8"], "--batch takes the whole request from its file and would ignore --num-gpus"),
])
def test_request_files_refuse_flags_they_would_ignore(args: list[str], needle: str) -> None:
    r = run("estimate", *args)
    assert r.exit_code == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_run_refuses_nproc_0_before_launching(tmp_path: Path) -> None:
    # found by the QA pass: --nproc 0 divided by zero while rescaling dp (a traceback); now refused up front
    out = tmp_path / "p.json"
    assert run("plan", "--model", "Llama-3.1-8B", "--gpu", "H100", "--num-gpus", "8", "--global-batch", "64",
               "--seq-len", "4096", "--tp", "2", "--top-k", "1", "--out", str(out)).exit_code == 0
    r = run("run", str(out), "--nproc", "0")
    assert r.exit_code == 2 and "--nproc 0 must be positive" in r.stderr
