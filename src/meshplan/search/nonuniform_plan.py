"""A non-uniform plan as a `Plan` record (its `layout`), and its `Estimate` from the per-layer cost model."""

from __future__ import annotations

import numpy as np

from meshplan import __version__
from meshplan.cost.efficiency import Efficiency
from meshplan.cost.nonuniform import FULL_CODE, LayerCostTable, fits, layer_cost_table, price
from meshplan.cost.training import training_cost
from meshplan.estimator import Estimate, estimate_from_cost
from meshplan.plan import Plan, StageLayout
from meshplan.search.base import SearchRequest
from meshplan.search.nonuniform import NonUniformPlan
from meshplan.specs import ClusterSpec, ModelSpec, TrainWorkload
from meshplan.strategy import RECOMPUTE_CODES, Strategy, StrategyTable

NONUNIFORM_FORMULAS = {
    "stages": "micro-batches x slowest stage (per-layer times by recomputation, embedding on the first stage, "
              "head on the last); Narayanan 2021 §2.2",
    "pp_bubble": "(pp-1) x mean stage time (fill and drain); Narayanan 2021 §2.2",
    "pp_p2p": "activation send/recv per micro-batch, as for the uniform plan; Narayanan 2021 §4.1",
    "dp_comm": "gradient/parameter sync by ZeRO stage of the base strategy; Rajbhandari 2020 §7",
    "optimizer": "Adam step, memory-bound, 34 B/param over HBM bandwidth",
}


def layout_of(plan: NonUniformPlan) -> StageLayout:
    return StageLayout(layers_per_stage=list(plan.layers_per_stage), recompute=plan.recompute_names())


def _bounds(layout: StageLayout) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(layout.layers_per_stage)]).astype(np.int64)


def estimate_of(table: LayerCostTable, bounds: np.ndarray, recompute: np.ndarray, model: ModelSpec,
                cluster: ClusterSpec, workload: TrainWorkload, eff: Efficiency) -> Estimate:
    """The `Estimate` of one non-uniform plan: the base strategy's record with the per-layer figures put in."""
    s = table.strategy
    base_table = StrategyTable.from_strategies([s])
    base = estimate_from_cost(training_cost(model, cluster, workload, base_table, eff), 0, model, cluster, workload,
                              base_table)
    p = price(table, bounds[None], recompute[None])
    step = float(p.step_time_s[0])
    stage_time = p.stage_time_s[0]
    worst = int(np.argmax(p.stage_bytes[0]))
    i, j = int(bounds[worst]), int(bounds[worst + 1])
    rows = np.arange(i, j)
    acts = float(table.layer_act_bytes()[rows, recompute[i:j]].sum()) * float(table.in_flight[worst])
    working = table.working_bytes if np.any(recompute[i:j] == FULL_CODE) else 0.0
    edges = float(table.edge_bytes()[worst]) - table.fixed_bytes
    memory = {
        "model_states": float(table.state_bytes[table.kind[rows]].sum()),
        "activations": acts + working,
        "edge_states_and_logits": edges,
        "overhead_and_buffers": table.fixed_bytes,
    }
    pp = len(stage_time)
    breakdown = {
        "stages": table.num_microbatches * float(stage_time.max()),
        "pp_bubble": (pp - 1) * float(stage_time.mean()),
        "pp_p2p": base.breakdown["pp_p2p"],
        "dp_comm": base.breakdown["dp_comm"],
        "optimizer": base.breakdown["optimizer"],
    }
    speedup = base.step_time_s / step
    peak = float(p.peak_bytes[0])
    return base.model_copy(update={
        "step_time_s": step, "tokens_per_s": float(p.tokens_per_s[0]),
        "tokens_per_s_per_gpu": float(p.tokens_per_s[0]) / cluster.num_gpus,
        "tflops_per_gpu": base.tflops_per_gpu * speedup, "mfu": base.mfu * speedup, "hfu": base.hfu * speedup,
        "peak_memory_bytes": peak, "fits": bool(fits(peak, cluster.gpu.hbm_bytes)), "breakdown": breakdown,
        "memory_breakdown": memory, "formulas": NONUNIFORM_FORMULAS,
    })


def layout_estimate(model: ModelSpec, cluster: ClusterSpec, workload: TrainWorkload, strategy: Strategy,
                    layout: StageLayout, eff: Efficiency) -> Estimate:
    """The estimate of a plan with a layout, priced as the search priced it: from the base strategy without
    recomputation (the layout says what each layer recomputes)."""
    table = layer_cost_table(model, cluster, workload, strategy.model_copy(update={"recompute": "none"}), eff)
    codes = np.array([RECOMPUTE_CODES.index(r) for r in layout.recompute])
    est = estimate_of(table, _bounds(layout), codes, model, cluster, workload, eff)
    return est.model_copy(update={"strategy": strategy})


def to_plan(plan: NonUniformPlan, request: SearchRequest, search: dict[str, object]) -> Plan:
    """The Plan record of a non-uniform plan (its strategy's own recomputation set to the most common one)."""
    names = plan.recompute_names()
    strategy = plan.strategy.model_copy(update={"recompute": max(RECOMPUTE_CODES, key=names.count)})
    layout = layout_of(plan)
    est = layout_estimate(request.model, request.cluster, request.workload, strategy, layout, request.efficiency)
    return Plan(meshplan_version=__version__, model=request.model, cluster=request.cluster, workload=request.workload,
                strategy=strategy, efficiency=request.efficiency, estimate=est, search=search, layout=layout)
