"""From ILP plans to what `meshplan run` executes: axis roles, weight styles, and refusals with the reason."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from meshplan.errors import PlanError
from meshplan.shard.apply import executable_plan, make_shard_plan
from meshplan.shard.planner import ShardRequest, shard
from meshplan.specs import load_gpu
from meshplan.specs.model import ModelSpec


def _result(mesh: tuple[int, ...], hidden: int, batch: int, seq: int):  # type: ignore[no-untyped-def]
    spec = ModelSpec(name="llama-4l", num_layers=4, hidden=hidden, num_heads=hidden // 128, num_kv_heads=8,
                     head_dim=128, vocab=32000, gated_mlp=True, tied_embeddings=False, ffn_hidden=3 * hidden)
    return shard(ShardRequest(model=spec, gpu=load_gpu("H100"), mesh=mesh, global_batch=batch, seq_len=seq))


def test_megatron_plan_becomes_column_row_pairs() -> None:
    ex = executable_plan(_result((4,), 4096, 1, 2048))
    assert (ex.dp, ex.tp, ex.tp_axis) == (1, 4, 0)
    for i in range(4):
        assert ex.module_plan[f"layers.{i}.attention.wqkv"] == "col" and ex.module_plan[f"layers.{i}.attention.wo"] == "row"
        assert ex.module_plan[f"layers.{i}.feed_forward.w13"] == "col"
        assert ex.module_plan[f"layers.{i}.feed_forward.w2"] == "row"


def test_two_batch_axes_are_one_data_parallel_group() -> None:
    result = _result((2, 2), 1024, 64, 1024)  # small model, large batch: every weight replicated
    assert all(d is None for dims in result.param_specs.values() for d in dims)
    ex = executable_plan(result)
    assert (ex.dp, ex.tp, ex.dp_axes, ex.module_plan) == (4, 1, (0, 1), {k: "rep" for k in ex.module_plan})


def test_two_weight_axes_are_refused_with_the_reason() -> None:
    result = _result((2, 2), 2048, 8, 2048)  # the ILP shards weights along both axes
    with pytest.raises(PlanError, match=r"mesh axes 0 and 1 both shard weights \(2D tensor parallelism\)"):
        executable_plan(result)
    plan = make_shard_plan(result)
    assert plan.executable is None and "2D tensor parallelism" in (plan.not_executable or "")
