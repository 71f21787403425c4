"""`Plan`: a versioned, self-contained JSON record of one training strategy and its estimate.

A plan carries the full specs (so a model loaded from a config.json travels with it), the strategy, the
efficiency factors it was priced with, the estimate, and how it was found. `meshplan estimate --plan`
re-prices it from those inputs alone and gets the same figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from meshplan.cost.efficiency import Efficiency
from meshplan.errors import PlanError, first_error
from meshplan.estimator import Estimate
from meshplan.specs import ClusterSpec, GpuSpec, ModelSpec, TrainWorkload
from meshplan.specs.base import Frozen
from meshplan.strategy import Recompute, Strategy

PLAN_SCHEMA_VERSION = 1


class StageLayout(Frozen):
    """A non-uniform plan: its own number of layers on each pipeline stage and its own recomputation per layer."""

    layers_per_stage: list[int]
    """Layers of each stage, first stage first (they add up to the model's layers)."""
    recompute: list[Recompute]
    """Recomputation of each layer, in model order (the strategy's own `recompute` is then not used)."""


class Plan(Frozen):
    """One training plan: what is trained where, how it is parallelised, and what that is predicted to cost."""

    schema_version: int = PLAN_SCHEMA_VERSION
    """Format version of this record; readers refuse versions they do not know."""
    kind: Literal["training"] = "training"
    meshplan_version: str
    """The meshplan release that wrote the plan."""
    model: ModelSpec
    cluster: ClusterSpec
    workload: TrainWorkload
    strategy: Strategy
    efficiency: Efficiency
    """The efficiency factors the estimate used (layer 2 of hardware knowledge)."""
    estimate: Estimate
    search: dict[str, Any] = {}
    """How the plan was found: algorithm, objective, strategies enumerated / valid / fitting, rank."""
    layout: StageLayout | None = None
    """Per-stage layers and per-layer recomputation of a non-uniform plan; None: the even split of `cost.stages`
    and the strategy's recomputation for every layer (plans written before this field read as such)."""

    @model_validator(mode="after")
    def _check_layout(self) -> Plan:
        lay, s = self.layout, self.strategy
        if lay is None:
            return self
        if s.vpp != 1 or len(lay.layers_per_stage) != s.pp or min(lay.layers_per_stage) < 1:
            raise PlanError(f"layout: {len(lay.layers_per_stage)} stages {lay.layers_per_stage} for pp={s.pp}, "
                            f"vpp={s.vpp}; give one positive layer count per stage, with vpp 1")
        if sum(lay.layers_per_stage) != self.model.num_layers or len(lay.recompute) != self.model.num_layers:
            raise PlanError(f"layout: {sum(lay.layers_per_stage)} layers in stages and {len(lay.recompute)} "
                            f"recomputation entries for a model of {self.model.num_layers} layers; they must match")
        return self


class ServingPlan(Frozen):
    """One serving plan: the model, GPU, deployment and workload, and what they are predicted to deliver."""

    schema_version: int = PLAN_SCHEMA_VERSION
    """Format version of this record; readers refuse versions they do not know."""
    kind: Literal["serving"] = "serving"
    meshplan_version: str
    """The meshplan release that wrote the plan."""
    model: ModelSpec
    gpu: GpuSpec
    deployment: dict[str, Any]
    """`meshplan.serve.deployment.Deployment` fields (tp, pp, ep, attn_dp, replicas, precision, ...)."""
    workload: dict[str, Any]
    """`meshplan.serve.workload.ServeWorkload` fields."""
    engine: str
    """Engine whose defaults and fitted overheads priced the plan."""
    estimate: dict[str, Any]
    """The `ServeEstimate` (TTFT/TPOT, throughput, memory, breakdown, provenance)."""
    launch: dict[str, str] = Field(default_factory=dict)
    """Launch commands per engine, each with the engine version it was written for."""
    search: dict[str, Any] = Field(default_factory=dict)
    """How the plan was found (objective, rank, candidates priced)."""


def write_plan(plan: Plan | ServingPlan, path: Path) -> None:
    path.write_text(json.dumps(plan.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")


def _load_json(path: Path, writer: str) -> Any:
    """The JSON of a plan file; a clear `PlanError` naming the command that writes one (`writer`)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"plan file {str(path)!r} does not exist; write one with `{writer}`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"plan file {str(path)!r} is not valid JSON ({exc}); pass a file written by `{writer}`") from None


def read_plan(path: Path) -> Plan:
    """A plan from a JSON file; a clear `PlanError` for a missing, foreign or newer file."""
    data = _load_json(path, "meshplan plan --out")
    if isinstance(data, dict) and data.get("kind") == "serving":
        raise PlanError(f"{str(path)!r} is a serving plan (kind 'serving'); `meshplan serve --plan` prices it again, "
                        "`meshplan estimate` prices training plans only")
    if not isinstance(data, dict) or "schema_version" not in data or "strategy" not in data:
        raise PlanError(f"{str(path)!r} is not a meshplan plan (no schema_version/strategy); pass a file written by `meshplan plan --out`")
    version = data["schema_version"]
    if version != PLAN_SCHEMA_VERSION:
        raise PlanError(f"plan file {str(path)!r} has schema_version={version!r}; this meshplan reads version "
                        f"{PLAN_SCHEMA_VERSION}: upgrade meshplan or re-create the plan")
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        where, msg, _ = first_error(exc)
        raise PlanError(f"plan file {str(path)!r}: {where}: {msg}; re-create the plan with `meshplan plan --out`") from None


def reprice(plan: Plan) -> Estimate:
    """Price a plan again from its own specs, strategy, layout and efficiency factors."""
    from meshplan.cost.training import training_cost
    from meshplan.estimator import estimate_from_cost
    from meshplan.strategy import StrategyTable, check_strategy

    check_strategy(plan.strategy, plan.model, plan.cluster, plan.workload)
    if plan.layout is not None:
        from meshplan.search.nonuniform_plan import layout_estimate

        return layout_estimate(plan.model, plan.cluster, plan.workload, plan.strategy, plan.layout, plan.efficiency)
    table = StrategyTable.from_strategies([plan.strategy])
    cost = training_cost(plan.model, plan.cluster, plan.workload, table, plan.efficiency)
    return estimate_from_cost(cost, 0, plan.model, plan.cluster, plan.workload, table)


def read_serving_plan(path: Path) -> ServingPlan:
    """A serving plan from a JSON file written by `meshplan serve --out`; a clear `PlanError` otherwise."""
    data = _load_json(path, "meshplan serve --out")
    if not isinstance(data, dict) or data.get("kind") != "serving":
        raise PlanError(f"{str(path)!r} is not a serving plan (kind must be 'serving'); pass a file written by "
                        "`meshplan serve --out`")
    if data.get("schema_version") != PLAN_SCHEMA_VERSION:
        raise PlanError(f"plan file {str(path)!r} has schema_version={data.get('schema_version')!r}; this meshplan "
                        f"reads version {PLAN_SCHEMA_VERSION}: upgrade meshplan or re-create the plan")
    try:
        return ServingPlan.model_validate(data)
    except ValidationError as exc:
        where, msg, _ = first_error(exc)
        raise PlanError(f"plan file {str(path)!r}: {where}: {msg}; re-create it with `meshplan serve --out`") from None
