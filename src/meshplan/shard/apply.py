"""From a sharding plan to something `meshplan run` executes.

The ILP's layouts become a DTensor plan: per mesh axis, the axis that splits the model input by batch is data
parallel (replicated weights, gradients all-reduced); the other is a tensor-parallel axis on which every linear
or embedding weight is `Shard(0)` (column: `ColwiseParallel`), `Shard(1)` (row: `RowwiseParallel`) or replicated,
applied with `parallelize_module`. A column-parallel layer feeding a row-parallel one hands over its local
shard (Megatron's pairing, no collective between them); otherwise layouts meet replicated. Layouts the
executor cannot express are refused with the reason (no silent repair).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from meshplan import __version__
from meshplan.errors import PlanError
from meshplan.run.config import RunConfig
from meshplan.shard.planner import ShardResult
from meshplan.specs.base import Frozen
from meshplan.strategy import Strategy

SHARD_PLAN_SCHEMA_VERSION = 1
Style = Literal["col", "row", "rep"]
PAIRS = (("attention.wqkv", "attention.wo"), ("feed_forward.w13", "feed_forward.w2"))
"""(column, row) partners inside each decoder block: a column shard flows into its partner unchanged."""


class ExecutablePlan(Frozen):
    """What the executor runs: the data- and tensor-parallel axes and each weight's style on the latter."""

    dp: int
    tp: int
    dp_axes: tuple[int, ...]
    """Mesh axes run as data parallel (their sizes multiply into dp)."""
    tp_axis: int | None
    module_plan: dict[str, Style]
    """Module name -> col / row / rep along the tensor-parallel axis."""
    differences: tuple[str, ...] = ()
    """Where the run departs from the plan: activation layouts the executor keeps whole."""


class ShardPlan(Frozen):
    """The file `meshplan shard --out` writes and `meshplan run` reads."""

    schema_version: int = SHARD_PLAN_SCHEMA_VERSION
    kind: Literal["shard"] = "shard"
    meshplan_version: str = __version__
    result: ShardResult
    executable: ExecutablePlan | None
    not_executable: str | None = None
    """Why the executor cannot run this plan (None when it can)."""


def _axis_roles(result: ShardResult) -> tuple[list[int], int | None, list[str]]:
    """(data-parallel axes, the tensor-parallel axis, notes): an axis that splits the input by batch, or shards no
    weight, is data parallel; one that shards weights is tensor parallel (at most one)."""
    mesh = result.request.mesh
    weight_axes = {a for dims in result.param_specs.values() for a, d in enumerate(dims) if d is not None}
    dp_axes: list[int] = []
    tp_axis = None
    notes = []
    for axis, size in enumerate(mesh):
        if size == 1:
            continue
        role = result.input_axes[axis]
        if role not in (None, "batch"):
            raise PlanError(f"mesh axis {axis} splits the input by {role}; the executor splits data by batch only")
        if role == "batch" or axis not in weight_axes:
            dp_axes.append(axis)
            if role is None:
                notes.append(f"mesh axis {axis} shards no weight and the plan splits the batch only after the input "
                             "(or not at all); the executor splits it at the input (same results)")
        elif tp_axis is not None:
            raise PlanError(f"mesh axes {tp_axis} and {axis} both shard weights (2D tensor parallelism); the executor "
                            "runs one tensor-parallel axis")
        else:
            tp_axis = axis
    if tp_axis is not None and any(a > tp_axis for a in dp_axes):
        notes.append(f"the tensor-parallel axis {tp_axis} is outside a data-parallel one in the plan; the executor "
                     "puts it innermost (ranks placed differently, same results)")
    return dp_axes, tp_axis, notes


def executable_plan(result: ShardResult) -> ExecutablePlan:
    """The executor's form of a plan; a `PlanError` naming what it cannot express."""
    mesh = result.request.mesh
    dp_axes, tp_axis, differences = _axis_roles(result)
    styles: dict[str, Style] = {}
    for name, dims in result.param_specs.items():
        for a in dp_axes:
            if dims[a] is not None:
                raise PlanError(f"{name} is sharded along mesh axis {a}, which splits the batch of other operators; "
                                "the executor keeps weights whole across data-parallel ranks")
        dim = dims[tp_axis] if tp_axis is not None else None
        if not name.endswith(".weight") or len(dims) == 0:
            continue
        module = name[: -len(".weight")]
        if dim is not None and module.endswith("norm"):
            raise PlanError(f"{name} is sharded; the executor keeps norm weights replicated")
        styles[module] = "rep" if dim is None else ("col" if dim == 0 else "row")
    if tp_axis is not None:
        split = sorted({op.module or op.name for op in result.ops
                        if op.kind not in ("linear", "embedding") and op.axes[tp_axis] in ("seq", "batch")})
        if split:
            differences.append(f"the plan splits activations along mesh axis {tp_axis} by sequence or batch between "
                               f"the weights ({', '.join(split[:3])}{', ...' if len(split) > 3 else ''}); the executor "
                               "keeps them whole there (same weights and results, more memory)")
    return ExecutablePlan(differences=tuple(differences), dp=math.prod(mesh[a] for a in dp_axes),
                          tp=mesh[tp_axis] if tp_axis is not None else 1, dp_axes=tuple(dp_axes), tp_axis=tp_axis,
                          module_plan={k: v for k, v in styles.items() if not k.endswith("norm")})


def make_shard_plan(result: ShardResult) -> ShardPlan:
    try:
        return ShardPlan(result=result, executable=executable_plan(result))
    except PlanError as exc:
        return ShardPlan(result=result, executable=None, not_executable=str(exc))


def write_shard_plan(plan: ShardPlan, path: Path) -> None:
    path.write_text(json.dumps(plan.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")


def is_shard_plan(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("kind") == "shard"


def read_shard_plan(path: Path) -> ShardPlan:
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("schema_version") != SHARD_PLAN_SCHEMA_VERSION:
        raise PlanError(f"shard plan {str(path)!r} has schema_version={data.get('schema_version')!r}; this meshplan "
                        f"reads {SHARD_PLAN_SCHEMA_VERSION}: re-create it with `meshplan shard --out`")
    return ShardPlan.model_validate(data)


def config_from_shard_plan(path: Path, *, model: str | None, nproc: int | None, steps: int, seq_len: int | None,
                           global_batch: int | None, timeout_s: float) -> tuple[RunConfig, list[str]]:
    """The run of a shard plan: its layout on its model, or on a stand-in (`tiny`: same layer names)."""
    from meshplan.run.plan_run import DEFAULT_SEQ_LEN, tiny_model
    from meshplan.specs import load_model

    plan = read_shard_plan(path)
    if plan.executable is None:
        raise PlanError(f"shard plan {str(path)!r} cannot be executed: {plan.not_executable}")
    ex = plan.executable
    req = plan.result.request
    strategy = Strategy(dp=ex.dp, tp=ex.tp, zero=0, sequence_parallel=False)
    if nproc is not None and nproc != strategy.num_gpus:
        raise PlanError(f"--nproc {nproc} differs from the plan's mesh of {strategy.num_gpus} devices; a shard plan "
                        "runs on its own mesh: drop --nproc or re-plan with another --mesh")
    notes = []
    if model is None:
        spec = req.model
    elif model == "tiny":
        spec = tiny_model(strategy).model_copy(update={"num_layers": req.model.num_layers})
    else:
        spec = load_model(model)
    if spec.num_layers != req.model.num_layers:
        raise PlanError(f"--model {model} has {spec.num_layers} layers, the plan {req.model.num_layers}; the "
                        "per-layer layout needs the same layers (use --model tiny)")
    if model is not None:
        notes.append(f"model {req.model.name} -> {spec.name} ({spec.total_params() / 1e6:,.2f}M parameters), "
                     "layout kept")
    seq = seq_len or (req.seq_len if model is None else DEFAULT_SEQ_LEN)
    batch = global_batch or (req.global_batch if model is None else ex.dp * 2)
    if batch % ex.dp:
        raise PlanError(f"global batch {batch} is not divisible by the data-parallel axis size {ex.dp}")
    cfg = RunConfig(model=spec, strategy=strategy, global_batch=batch, seq_len=seq, steps=steps, timeout_s=timeout_s,
                    module_plan=ex.module_plan if ex.tp > 1 else None)
    return cfg, notes


def apply_module_plan(model: Any, tp_mesh: Any, module_plan: Mapping[str, str]) -> None:
    """Shard the weights of `model` (the run decoder, or a pipeline stage of it) along `tp_mesh` with
    `parallelize_module`: Colwise/RowwiseParallel per the plan; a column shard flows into its row partner."""
    from torch import nn
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    modules = dict(model.named_modules())
    missing = [name for name in module_plan if name not in modules]
    if missing:
        raise PlanError(f"shard plan modules {missing[:3]} are not in the model; run it on the model it was made for")
    partner: dict[str, tuple[str, str]] = {}
    for name in module_plan:
        for col, row in PAIRS:
            if name.endswith(col):
                partner[name] = ("next", name[: -len(col)] + row)
            if name.endswith(row):
                partner[name] = ("prev", name[: -len(row)] + col)
    styles: dict[str, Any] = {}
    for name, style in module_plan.items():
        if style == "rep":
            continue
        embedding = isinstance(modules[name], nn.Embedding)
        other = partner.get(name)
        if style == "col":
            hands_over = not embedding and other is not None and module_plan.get(other[1]) == "row"
            styles[name] = ColwiseParallel(output_layouts=Shard(-1) if hands_over else Replicate())
        else:
            takes_shard = not embedding and other is not None and module_plan.get(other[1]) == "col"
            styles[name] = RowwiseParallel(input_layouts=Shard(-1) if takes_shard else Replicate(),
                                           output_layouts=Replicate())
    if styles:
        parallelize_module(model, tp_mesh, styles)
