"""A non-uniform plan in the Plan format: round trip, validation, re-pricing; `meshplan run` executes its uneven
stages and per-layer recomputation with loss parity (tier 3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from meshplan.cost.efficiency import default_efficiency
from meshplan.cost.nonuniform import layer_cost_table
from meshplan.errors import PlanError
from meshplan.plan import Plan, read_plan, reprice, write_plan
from meshplan.search.base import SearchRequest
from meshplan.search.nonuniform import plan_of
from meshplan.search.nonuniform_plan import to_plan
from meshplan.specs import load_model
from meshplan.specs.catalog import load_gpu
from meshplan.specs.cluster import make_cluster
from meshplan.specs.model import ModelSpec
from meshplan.specs.workload import TrainWorkload
from meshplan.strategy import Strategy

# A tiny Llama-style model (the executor's stand-in) with 4 layers on 2 stages split 1 + 3, layers recomputed
# full, none, selective, full.
STRATEGY = Strategy(dp=1, pp=2, micro_batch=1)
TINY = ModelSpec(name="tiny", num_layers=4, hidden=64, ffn_hidden=128, num_heads=4, num_kv_heads=2, head_dim=16,
                 vocab=256, gated_mlp=True, tied_embeddings=False)
BOUNDS, RECOMPUTE = (0, 1, 4), (2, 0, 1, 2)


def _plan(model: ModelSpec = TINY) -> Plan:
    request = SearchRequest(model=model, cluster=make_cluster(load_gpu("H100-SXM"), 2),
                            workload=TrainWorkload(global_batch=4, seq_len=32), efficiency=default_efficiency())
    table = layer_cost_table(request.model, request.cluster, request.workload, STRATEGY, request.efficiency)
    return to_plan(plan_of(table, BOUNDS, RECOMPUTE), request, {"algorithm": "dp"})


def test_layout_round_trips_and_reprices(tmp_path: Path) -> None:
    plan = _plan()
    assert plan.layout is not None and plan.layout.layers_per_stage == [1, 3]
    assert plan.layout.recompute == ["full", "none", "selective", "full"]
    path = tmp_path / "plan.json"
    write_plan(plan, path)
    back = read_plan(path)
    assert back == plan
    again = reprice(back)
    assert again.step_time_s == pytest.approx(plan.estimate.step_time_s, rel=1e-12)
    assert sum(again.breakdown.values()) == pytest.approx(again.step_time_s, rel=1e-12)
    assert sum(again.memory_breakdown.values()) == pytest.approx(again.peak_memory_bytes, rel=1e-12)


def test_plan_without_layout_still_reads(tmp_path: Path) -> None:
    data = _plan().model_dump(mode="json")
    del data["layout"]  # a plan written before the field existed
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    assert read_plan(path).layout is None


def test_inconsistent_layout_is_refused(tmp_path: Path) -> None:
    data = _plan().model_dump(mode="json")
    data["layout"]["layers_per_stage"] = [2, 3]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=r"layout: 5 layers in stages .* model of 4 layers"):
        read_plan(path)


def test_non_uniform_405b_plan_prices_what_the_search_found() -> None:
    model, cluster = load_model("llama-3.1-405b"), make_cluster(load_gpu("H100-SXM"), 16384)
    request = SearchRequest(model=model, cluster=cluster, workload=TrainWorkload(global_batch=2048, seq_len=8192),
                            efficiency=default_efficiency())
    s = Strategy(dp=128, tp=8, pp=16, sequence_parallel=True)
    table = layer_cost_table(model, cluster, request.workload, s, request.efficiency)
    bounds = np.concatenate([[0], np.cumsum([7] + [8] * 14 + [7])])
    found = plan_of(table, bounds, np.r_[[0] * 7, [2] * 2, [0] * 117])
    plan = to_plan(found, request, {})
    assert plan.estimate.tokens_per_s == pytest.approx(found.tokens_per_s, rel=1e-12)
    assert plan.strategy.recompute == "none"  # the most common per-layer choice


def test_plan_of_mostly_recomputed_layers_reprices_as_searched() -> None:
    # ZeRO-3's exposed gather time depends on the recomputation of the strategy it is priced with; the plan's
    # strategy shows the most common per-layer choice (full) but is priced as the search priced it.
    model, cluster = load_model("llama-3.1-70b"), make_cluster(load_gpu("H100-SXM"), 512)
    request = SearchRequest(model=model, cluster=cluster, workload=TrainWorkload(global_batch=1024, seq_len=4096),
                            efficiency=default_efficiency())
    table = layer_cost_table(model, cluster, request.workload, Strategy(dp=16, tp=8, pp=4, zero=3),
                             request.efficiency)
    found = plan_of(table, (0, 20, 40, 60, 80), [2] * 70 + [0] * 10)
    plan = to_plan(found, request, {})
    assert plan.strategy.recompute == "full" and plan.estimate.strategy == plan.strategy
    assert plan.estimate.tokens_per_s == pytest.approx(found.tokens_per_s, rel=1e-12)


@pytest.mark.multiprocess
def test_meshplan_run_executes_uneven_stages_with_loss_parity(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from test_run_parity import TOLERANCE, _once_more_if_killed

    from meshplan.run.launch import launch
    from meshplan.run.plan_run import config_from_plan

    path = tmp_path / "plan.json"
    write_plan(_plan(), path)
    cfg, notes = config_from_plan(path, model=None, nproc=None, steps=3, seq_len=32, global_batch=4, timeout_s=60)
    assert cfg.stage_layers == [1, 3] and cfg.layer_recompute == ["full", "none", "selective", "full"]
    assert any("non-uniform layout" in n for n in notes)
    result = _once_more_if_killed(lambda: launch(cfg, 2))
    assert result is not None and result.world_size == 2
    assert result.max_loss_rel_diff is not None and result.max_loss_rel_diff <= TOLERANCE
    assert result.max_grad_norm_rel_diff is not None and result.max_grad_norm_rel_diff <= TOLERANCE


def test_stage_modules_follow_the_layout_and_recompute_layer_by_layer() -> None:
    pytest.importorskip("torch")
    from meshplan.run.model import build_model
    from meshplan.run.parallel import apply_checkpointing, stage_modules

    model = build_model(TINY, seed=0)
    per_layer = ["full", "none", "selective", "full"]
    held = {}
    for rank in (0, 1):
        [(index, stage)] = stage_modules(model, STRATEGY, rank, stage_layers=[1, 3])
        apply_checkpointing(stage, "none", per_layer)
        held[index] = stage
    assert list(held[0].layers.keys()) == ["0"] and list(held[1].layers.keys()) == ["1", "2", "3"]
    assert held[0].tok_embeddings is not None and held[1].output is not None and held[0].output is None
    wrapped = {name: type(block).__name__ for s in held.values() for name, block in s.layers.items()}
    assert wrapped["0"] == wrapped["3"] == "CheckpointWrapper" and wrapped["1"] == wrapped["2"] == "Block"
    assert held[1].layers["2"].attention.checkpoint_core and not held[1].layers["1"].attention.checkpoint_core
