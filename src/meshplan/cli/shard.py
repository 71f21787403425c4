"""`meshplan shard`: Alpa-style sharding of the model's operator graph on a logical mesh."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from meshplan.errors import PlanError

Opt = typer.Option
GB = 1e9  # bytes per displayed GB


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms"


def shard_cmd(
    model: Annotated[str | None, Opt(help="Preset name or path to a Hugging Face config.json.")] = None,
    mesh: Annotated[str | None, Opt(help="Logical device mesh, e.g. 8 or 2x4 (last axis innermost).")] = None,
    gpu: Annotated[str, Opt(help="GPU at every mesh point (see `meshplan gpus`).")] = "H100",
    global_batch: Annotated[int, Opt(help="Sequences per step on the whole mesh.")] = 8,
    seq_len: Annotated[int, Opt(help="Tokens per sequence.")] = 2048,
    memory: Annotated[float | None, Opt(help="Memory bound per device, GB (default: the GPU's).")] = None,
    dtype: Annotated[str, Opt(help="bf16 or fp32.")] = "bf16",
    gpus_per_node: Annotated[int | None, Opt(help="Devices per NVLink domain (default: the GPU's usual system).")] = None,
    merge: Annotated[bool, Opt("--merge/--no-merge", help="Solve identical layers once.")] = True,
    microbatches: Annotated[int, Opt(help="Above 1: also cut the layers into pipeline stages (Alpa's DP).")] = 1,
    time_limit: Annotated[float, Opt(help="Seconds the ILP solver may search.")] = 60.0,
    as_json: Annotated[bool, Opt("--json", help="Print the plan as JSON.")] = False,
    out: Annotated[Path | None, Opt(help="Write the plan to this JSON file (`meshplan run` executes it).")] = None,
) -> None:
    """Choose a sharding per operator (ILP over the traced graph) and print it with its collectives."""
    from meshplan.cli.main import _check_out, _fail

    if model is None or mesh is None:
        _fail("missing " + ", ".join(f for f, v in [("--model", model), ("--mesh", mesh)] if v is None)
              + "; `meshplan shard --help` shows every option")
        return
    try:
        from meshplan.run import require_torch

        require_torch()
        from meshplan.shard.mesh import parse_mesh
        from meshplan.shard.planner import ShardRequest, shard, trace_request
        from meshplan.specs import load_gpu, load_model

        if dtype not in ("bf16", "fp32"):
            raise PlanError(f"--dtype {dtype!r} is not bf16 or fp32; choose one of them")
        if global_batch <= 0 or seq_len <= 0:
            raise PlanError(f"--global-batch {global_batch} and --seq-len {seq_len} must be positive")
        if memory is not None and memory <= 0:
            raise PlanError(f"--memory {memory} must be a positive number of GB")
        if microbatches <= 0 or global_batch % microbatches:
            raise PlanError(f"--microbatches {microbatches} must be positive and divide --global-batch {global_batch}")
        _check_out(out)
        try:
            req = ShardRequest(model=load_model(model), gpu=load_gpu(gpu), mesh=parse_mesh(mesh),
                               global_batch=global_batch, seq_len=seq_len, dtype=dtype,  # type: ignore[arg-type]
                               memory_bytes=memory * GB if memory is not None else None, gpus_per_node=gpus_per_node,
                               merge_layers=merge, time_limit_s=time_limit)
        except ValidationError as exc:  # --gpus-per-node, --time-limit
            err = exc.errors()[0]
            flag = {"time_limit_s": "--time-limit"}.get(str(err["loc"][0]), "--" + str(err["loc"][0]).replace("_", "-"))
            raise PlanError(f"{flag} {err.get('input')!r}: {err['msg']}; fix that flag") from None
        whole: str | None = None  # why the whole batch on the whole mesh does not fit (pipelining may)
        try:
            result = shard(req)
        except PlanError as exc:
            if microbatches == 1 or "memory bound" not in str(exc):
                raise
            result, whole = None, str(exc)
        pipeline = None
        if microbatches > 1:
            from meshplan.shard.mesh import LogicalMesh
            from meshplan.shard.stages import plan_stages

            graph = trace_request(req, batch=global_batch // microbatches)
            lmesh = LogicalMesh.build(req.mesh, req.gpu, dtype=req.dtype, gpus_per_node=gpus_per_node)
            pipeline = plan_stages(graph, lmesh, microbatches, req.memory_bytes or req.gpu.hbm_bytes, merge=merge,
                                   time_limit_s=time_limit)
        if result is None and out is not None:
            raise PlanError(f"--out writes a plan without pipeline stages, and none fits: {whole}")
    except PlanError as exc:
        _fail(str(exc))
        return
    from meshplan.shard.apply import make_shard_plan, write_shard_plan

    plan = make_shard_plan(result) if result is not None else None
    if as_json:
        payload: dict[str, Any] = plan.model_dump(mode="json") if plan is not None else {"result": None, "error": whole}
        if pipeline is not None:
            payload["pipeline"] = pipeline.model_dump(mode="json")
        print(json.dumps(payload, indent=2))
    else:
        console = Console() if sys.stdout.isatty() else Console(width=120)
        if plan is not None:
            _print(plan, console)
        else:
            console.print(f"without pipeline stages: {escape(whole or '')}", highlight=False)
        if pipeline is not None:
            from meshplan.cli.render import print_tables

            print_tables([_pipeline_table(pipeline)], console)
    if out is not None and plan is not None:
        write_shard_plan(plan, out)
        Console(stderr=True).print(f"wrote {escape(str(out))}", highlight=False)


def _pipeline_table(pipeline: Any) -> Table:
    pipe = Table(title=f"pipeline stages, {pipeline.num_microbatches} micro-batches: step "
                       f"{_ms(pipeline.step_time_s)} ({pipeline.stage_ilps} stage ILPs, {pipeline.seconds:.1f} s)",
                 title_justify="left")
    for col in ("stage", "layers", "submesh", "time/micro-batch", "grad sync/step", "in flight", "memory GB"):
        pipe.add_column(col)
    for i, s in enumerate(pipeline.stages):
        pipe.add_row(str(i), f"{s.first_layer}-{s.last_layer}", "x".join(map(str, s.submesh)), _ms(s.time_s),
                     _ms(s.grad_sync_s), str(s.in_flight), f"{s.memory_bytes / GB:,.2f}")
    return pipe


def _print(plan: Any, console: Console) -> None:
    from meshplan.cli.render import print_tables

    r = plan.result
    req = r.request
    mesh = "x".join(map(str, req.mesh))
    head = Table(title=f"{req.model.name} on mesh {mesh} ({math.prod(req.mesh)} x {req.gpu.name}), batch "
                       f"{req.global_batch} x {req.seq_len} tokens, {req.dtype}", show_header=False, title_justify="left",
                 min_width=90)
    head.add_column(style="bold")
    head.add_column(justify="right")
    rows = [
        ("operators traced", f"{r.num_ops:,} in {r.trace_s:.2f} s"),
        ("groups (followers folded)", f"{r.num_groups:,}"),
        ("layers / distinct after merging", f"{r.num_layers} / {r.num_layer_classes}"),
        ("ILP variables / constraints", f"{r.ilp['variables']:,} / {r.ilp['constraints']:,}"),
        ("ILP build / solve", f"{r.ilp['build_s']:.2f} s / {r.ilp['solve_s']:.2f} s"
                              + ("" if r.ilp["optimal"] else " (time limit: best found)")),
        ("predicted step time", _ms(r.step_time_s)),
        ("  compute", _ms(r.compute_s)),
        ("  collectives of the strategies", _ms(r.comm_s)),
        ("  resharding", _ms(r.reshard_s)),
        ("memory per device", f"{r.memory_bytes / GB:,.2f} GB of {r.memory_bound_bytes / GB:,.2f} GB"),
        ("  weights, grads, optimizer", f"{r.weight_bytes / GB:,.2f} GB"),
        ("  activations", f"{r.act_bytes / GB:,.2f} GB"),
    ]
    for k, v in rows:
        head.add_row(k, v)
    ops = Table(title="strategy per operator (leaders; followers take their layout), by layer", title_justify="left")
    for col, justify in [("layer", "left"), ("operator", "left"), ("kind", "left"), ("shape", "left"),
                         ("strategy", "left"), ("followers", "right"), ("time/copy", "right")]:
        ops.add_column(col, justify=justify)  # type: ignore[arg-type]
    for op in r.ops:
        layer = "-" if op.scope is None else (f"{op.scope} (x{op.copies})" if op.copies > 1 else op.scope)
        kind = op.kind if op.kind in ("input", "linear", "embedding", "attention", "matmul") else f"{op.kind} ({op.target})"
        ops.add_row(layer, escape(op.module or op.name), kind, "x".join(map(str, op.shape)), op.strategy,
                    str(op.followers), _ms(op.time_s))
    coll = Table(title="collectives per step", title_justify="left")
    for col, justify in [("kind", "left"), ("axis", "right"), ("why", "left"), ("count", "right"), ("GB/rank", "right"),
                         ("time", "right")]:
        coll.add_column(col, justify=justify)  # type: ignore[arg-type]
    for c in r.collectives:
        coll.add_row(c.kind, str(c.axis), c.why, f"{c.count:,}", f"{c.bytes_per_step / GB:,.3f}", _ms(c.seconds))
    print_tables([head, ops, coll], console)
    if plan.executable is not None:
        ex = plan.executable
        dp_axes = ", ".join(map(str, ex.dp_axes)) or "none"
        console.print(f"executable: dp={ex.dp} (axes {dp_axes}), tp={ex.tp} (axis {ex.tp_axis}); "
                      "run it with `meshplan run PLAN.json --model tiny`", highlight=False)
        for note in ex.differences:
            console.print(f"  note: {escape(note)}", highlight=False)
    else:
        console.print(f"not executable by `meshplan run`: {escape(plan.not_executable or '')}", highlight=False)
