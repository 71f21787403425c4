"""`meshplan run plan.json`: turn a Plan (and optional overrides) into a `RunConfig` and launch it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshplan.errors import PlanError
from meshplan.plan import read_plan
from meshplan.run.config import RunConfig
from meshplan.run.parallel import check_runnable
from meshplan.specs import TrainWorkload, load_model
from meshplan.specs.model import ModelSpec
from meshplan.strategy import Strategy, check_strategy

DEFAULT_SEQ_LEN = 64  # tokens: what a small stand-in model trains on when --model overrides the plan's


def tiny_model(strategy: Strategy, moe: bool = False, num_layers: int | None = None) -> ModelSpec:
    """A small Llama-style model sized so that any layout fits it: KV heads >= tp, layers >= pp·vpp (or exactly
    `num_layers`, for a non-uniform plan's layout)."""
    kv = max(2, strategy.tp)
    heads = 2 * kv
    layers = num_layers or max(4, strategy.pp * strategy.vpp)
    spec: dict[str, Any] = dict(name="tiny-moe" if moe else "tiny", num_layers=layers, hidden=16 * heads, num_heads=heads,
                num_kv_heads=kv, head_dim=16, vocab=256, gated_mlp=True, tied_embeddings=False,
                ffn_hidden=0 if moe else 32 * heads)
    if moe:
        spec.update(num_experts=4, moe_topk=2, moe_ffn_hidden=16 * heads)
    return ModelSpec(**spec)


def config_from_plan(path: Path, *, model: str | None, nproc: int | None, steps: int, seq_len: int | None,
                     global_batch: int | None, timeout_s: float) -> tuple[RunConfig, list[str]]:
    """The run a plan describes, with its layout kept and (optionally) a smaller model and batch; notes say what
    was changed."""
    from meshplan.shard.apply import config_from_shard_plan, is_shard_plan

    if is_shard_plan(path):  # written by `meshplan shard --out`: a layout per operator
        return config_from_shard_plan(path, model=model, nproc=nproc, steps=steps, seq_len=seq_len, global_batch=global_batch,
                                      timeout_s=timeout_s)
    plan = read_plan(path)
    s = plan.strategy
    notes = []
    mp = s.tp * s.pp * s.cp
    if nproc is not None and nproc != s.num_gpus:
        if nproc % mp:
            raise PlanError(f"--nproc {nproc} is not a multiple of tp*pp*cp={mp} of the plan; choose a multiple")
        new_dp = nproc // mp
        if s.ep > 1 and (new_dp * s.cp) % s.ep:
            raise PlanError(f"--nproc {nproc} leaves dp={new_dp}, which ep={s.ep} does not divide; choose another")
        notes.append(f"dp {s.dp} -> {new_dp} to fit --nproc {nproc} (tp, pp, cp kept)")
        s = s.model_copy(update={"dp": new_dp})
    if model is None:
        spec = plan.model
    elif model in ("tiny", "tiny-moe"):
        layers = plan.model.num_layers if plan.layout is not None else None  # the layout keeps its layers
        spec = tiny_model(s, moe=model == "tiny-moe", num_layers=layers)
    else:
        spec = load_model(model)
    if model is not None:
        notes.append(f"model {plan.model.name} -> {spec.name} ({spec.total_params() / 1e6:,.2f}M parameters)")
    seq = seq_len or (plan.workload.seq_len if model is None else DEFAULT_SEQ_LEN)
    if global_batch is None:
        if model is None and nproc is None:
            batch = plan.workload.global_batch
        else:
            batch = s.dp * s.micro_batch * max(s.pp, 1)  # m = pp micro-batches: enough for 1F1B and interleaving
            notes.append(f"global batch {plan.workload.global_batch} -> {batch} ({max(s.pp, 1)} micro-batches per rank)")
    else:
        batch = global_batch
    if batch % (s.dp * s.micro_batch):
        raise PlanError(f"global batch {batch} is not divisible by dp*micro_batch={s.dp * s.micro_batch}")
    if seq != plan.workload.seq_len:
        notes.append(f"sequence {plan.workload.seq_len} -> {seq}")
    cluster = plan.cluster.model_copy(update={"num_gpus": s.num_gpus,
                                              "gpus_per_node": min(plan.cluster.gpus_per_node, s.num_gpus)})
    check_strategy(s, spec, cluster, TrainWorkload(global_batch=batch, seq_len=seq))
    lay = plan.layout
    if lay is not None and spec.num_layers != plan.model.num_layers:
        raise PlanError(f"the plan's layout splits {plan.model.num_layers} layers but --model {model} has "
                        f"{spec.num_layers}; run the plan's own model or --model tiny (which keeps the layers)")
    if lay is not None:
        notes.append(f"non-uniform layout: layers per stage {lay.layers_per_stage}, "
                     f"{sum(r != 'none' for r in lay.recompute)} of {len(lay.recompute)} layers recomputed")
    stage_layers = list(lay.layers_per_stage) if lay is not None else None
    layer_recompute = list(lay.recompute) if lay is not None else None
    check_runnable(spec, s, batch, seq, stage_layers, layer_recompute)
    cfg = RunConfig(model=spec, strategy=s, global_batch=batch, seq_len=seq, steps=steps, timeout_s=timeout_s,
                    stage_layers=stage_layers, layer_recompute=layer_recompute)
    return cfg, notes
