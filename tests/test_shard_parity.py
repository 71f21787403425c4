"""Tier 3: ILP-derived sharding plans executed by `meshplan run` on 2 and 4 CPU processes (gloo), with loss and
gradient-norm parity against one process. The plans are made for a 4-layer Llama-style model at a size where
sharding pays; they run on the same layer structure at toy width (`--model tiny`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from test_run_parity import TOLERANCE, _once_more_if_killed

from meshplan.cli.main import app
from meshplan.run.launch import launch_many
from meshplan.shard.apply import config_from_shard_plan, make_shard_plan, write_shard_plan
from meshplan.shard.planner import ShardRequest, shard
from meshplan.specs import load_gpu
from meshplan.specs.model import ModelSpec

pytestmark = pytest.mark.multiprocess


def _plan(tmp: Path, mesh: tuple[int, ...], hidden: int, batch: int, seq: int) -> Path:
    spec = ModelSpec(name=f"llama-4l-{hidden}", num_layers=4, hidden=hidden, num_heads=hidden // 128, num_kv_heads=8,
                     head_dim=128, vocab=32000, gated_mlp=True, tied_embeddings=False, ffn_hidden=3 * hidden)
    plan = make_shard_plan(shard(ShardRequest(model=spec, gpu=load_gpu("H100"), mesh=mesh, global_batch=batch,
                                              seq_len=seq)))
    assert plan.executable is not None, plan.not_executable
    path = tmp / f"shard-{'x'.join(map(str, mesh))}.json"
    write_shard_plan(plan, path)
    return path


def test_two_processes_through_meshplan_run(tmp_path: Path) -> None:
    path = _plan(tmp_path, (2,), 2048, 4, 1024)  # the ILP picks Megatron column/row MLPs, replicated attention
    styles = json.loads(path.read_text())["executable"]["module_plan"]
    assert styles["layers.3.feed_forward.w13"] == "col" and styles["layers.3.feed_forward.w2"] == "row"
    r = _once_more_if_killed(lambda: _run_cli(path))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["world_size"] == 2 and out["config"]["strategy"]["tp"] == 2
    assert out["max_loss_rel_diff"] <= TOLERANCE and out["max_grad_norm_rel_diff"] <= TOLERANCE


def _run_cli(path: Path):  # type: ignore[no-untyped-def]
    from meshplan.run.launch import RunFailed

    r = CliRunner().invoke(app, ["run", str(path), "--model", "tiny", "--steps", "2", "--json"])
    if r.exit_code == 1 and "run failed" in r.stderr:
        raise RunFailed(r.stderr)
    return r


def test_four_processes_tensor_parallel_and_dp_by_tp(tmp_path: Path) -> None:
    paths = [_plan(tmp_path, (4,), 4096, 1, 2048),  # Megatron attention and MLP on 4 ranks
             _plan(tmp_path, (2, 2), 2048, 128, 256)]  # data parallel on axis 1, vocab-sharded head on axis 0
    configs = [config_from_shard_plan(p, model="tiny", nproc=None, steps=2, seq_len=32, global_batch=None,
                                      timeout_s=60)[0] for p in paths]
    assert [(c.strategy.dp, c.strategy.tp) for c in configs] == [(1, 4), (2, 2)]
    assert configs[0].module_plan["layers.0.attention.wqkv"] == "col"
    results = _once_more_if_killed(lambda: launch_many(configs, 4))
    for result in results:
        assert result.world_size == 4
        assert result.max_loss_rel_diff <= TOLERANCE and result.max_grad_norm_rel_diff <= TOLERANCE
