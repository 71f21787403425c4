"""Pricing non-uniform training plans: each pipeline stage its own layers, each layer its own recomputation.

A non-uniform plan keeps the degrees of a base `Strategy` (dp, tp, pp, cp, ep, micro-batch, ZeRO, schedule) and
adds the layer bounds of every stage and a recomputation option per layer. Its step time follows the same
pipeline model as `cost.training` (Narayanan et al. 2021, §2.2):

    step = m · max_s T_s + (pp - 1) · mean_s T_s + pipeline sends + data-parallel sync + optimizer step

where T_s is stage s's time per micro-batch: the sum of its layers' times (each at its own recomputation),
plus the embedding on the first stage and the LM head and loss on the last. Peak memory is priced per stage:
its layers' model states, its layers' activations times the micro-batches it holds in flight (1F1B: stage s
holds pp - s, Narayanan et al. 2021 §2.2.1; GPipe: all m), the embedding/head states and logits on the edge
stages, and the framework overhead. Per-layer figures come from `cost.training` and `cost.memory`, so a
uniform split with one recomputation prices as `training_cost` does (tests hold them equal).

Layers of one kind cost the same, so the tables below keep one row per kind: the leading dense layers of an
MoE model (DeepSeek-V3: 3) and the main kind (every layer of a dense model). Everything is vectorised over a
population of plans (one row per plan), for the genetic and policy-gradient searchers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost.efficiency import Efficiency
from meshplan.cost.memory import (
    FRAMEWORK_OVERHEAD_BYTES,
    GATHER_BYTES,
    GRAD_BYTES,
    LOGIT_BYTES,
    OPTIMIZER_BYTES,
    WEIGHT_BYTES,
    activation_bytes_per_layer,
    num_microbatches,
)
from meshplan.cost.stages import stage_sizes
from meshplan.cost.training import layer_times, training_cost
from meshplan.errors import PlanError
from meshplan.specs.cluster import ClusterSpec
from meshplan.specs.model import ModelSpec
from meshplan.specs.workload import TrainWorkload
from meshplan.strategy import RECOMPUTE_CODES, Strategy, StrategyTable

NUM_OPTIONS = len(RECOMPUTE_CODES)  # none, selective, full (codes 0, 1, 2)
FULL_CODE = RECOMPUTE_CODES.index("full")
LEADING, MAIN = 0, 1  # layer kinds: leading dense layers of an MoE model, and the rest
# Relative tolerance of the memory check: a plan a DP puts exactly on the limit must not fail it because the
# pricing sums the same bytes in another order.
FIT_TOLERANCE = 1e-9


def fits(peak_bytes: np.ndarray | float, limit_bytes: float) -> np.ndarray:
    return np.asarray(peak_bytes) <= limit_bytes * (1.0 + FIT_TOLERANCE)


@dataclass(frozen=True)
class LayerCostTable:
    """What every layer, stage edge and fixed term of one base strategy costs (one micro-batch, one GPU)."""

    strategy: Strategy
    kind: np.ndarray
    """Kind of each layer (LEADING or MAIN), in model order."""
    time_s: np.ndarray
    """[kind, option] forward + backward (+ recomputation and collectives) seconds of one layer."""
    act_bytes: np.ndarray
    """[kind, option] activation bytes one layer keeps per micro-batch in flight."""
    state_bytes: np.ndarray
    """[kind] bytes of weights, gradients and optimizer states of one layer (ZeRO-sharded)."""
    working_bytes: float
    """One layer's full activations, re-materialised while a fully recomputed layer runs its backward."""
    first_time_s: float
    """Embedding on the first stage: the vocab-parallel all-reduce, seconds."""
    last_time_s: float
    """LM head GEMMs and its all-reduce on the last stage, seconds."""
    first_bytes: float
    """Embedding states on the first stage, bytes."""
    last_bytes: float
    """LM head (and tied second copy) states plus fp32 logits on the last stage, bytes."""
    fixed_bytes: float
    """Framework overhead and, without PP, ZeRO-3's unsharded head and prefetched layer, bytes."""
    in_flight: np.ndarray
    """[stage] micro-batches whose activations the stage holds at its peak."""
    num_microbatches: float
    other_s: float
    """Pipeline sends, exposed data-parallel sync and optimizer step, seconds per step (from the base strategy:
    the sync of the largest stage's parameters, as `training_cost` prices it)."""
    tokens_per_step: float

    @property
    def num_layers(self) -> int:
        return len(self.kind)

    @property
    def num_stages(self) -> int:
        return len(self.in_flight)

    def price(self, bounds: np.ndarray, recompute: np.ndarray) -> PricedPlans:
        return price(self, bounds, recompute)

    def layer_time_s(self) -> np.ndarray:
        """[layer, option] seconds."""
        return self.time_s[self.kind]

    def layer_act_bytes(self) -> np.ndarray:
        """[layer, option] bytes per micro-batch."""
        return self.act_bytes[self.kind]

    def edge_time_s(self) -> np.ndarray:
        """[stage] extra seconds: the embedding on the first, the head on the last (both when pp = 1)."""
        extra = np.zeros(self.num_stages)
        extra[0] += self.first_time_s
        extra[-1] += self.last_time_s
        return extra

    def edge_bytes(self) -> np.ndarray:
        """[stage] bytes every stage holds besides its layers (edge states, logits, overhead)."""
        extra = np.full(self.num_stages, self.fixed_bytes)
        extra[0] += self.first_bytes
        extra[-1] += self.last_bytes
        return extra


def _sharded_bytes(params: float, shard: float, zero: int, pp: int) -> float:
    """Model-state bytes of `params` parameters: ZeRO stage z shards the optimizer (z>=1), gradients (z>=2) and
    weights (z=3) over `shard` ranks (Rajbhandari et al. 2020, §5); ZeRO-3 under PP also holds the stage's
    weights and gradients unsharded through the step (`cost.memory`, torch.distributed.pipelining)."""
    weights = WEIGHT_BYTES / (shard if zero >= 3 else 1.0)
    grads = GRAD_BYTES / (shard if zero >= 2 else 1.0)
    optimizer = OPTIMIZER_BYTES / (shard if zero >= 1 else 1.0)
    unsharded = 2 * GATHER_BYTES if zero >= 3 and pp > 1 and shard > 1 else 0.0
    return params * (weights + grads + optimizer + unsharded)


def in_flight_per_stage(s: Strategy, m: float) -> np.ndarray:
    """1F1B: stage k holds min(pp, m) - k micro-batches, at least one (Narayanan et al. 2021, §2.2.1); GPipe: m."""
    if s.pp == 1:
        return np.ones(1)
    if s.schedule == "gpipe":
        return np.full(s.pp, m)
    return np.maximum(min(float(s.pp), m) - np.arange(s.pp), 1.0)


def layer_cost_table(model: ModelSpec, cluster: ClusterSpec, workload: TrainWorkload, strategy: Strategy,
                     eff: Efficiency) -> LayerCostTable:
    """Per-layer costs of `strategy`'s degrees for every recomputation option (the strategy's own recomputation
    is ignored; its split is replaced by the plan's)."""
    if strategy.vpp > 1 or strategy.schedule == "interleaved":
        raise PlanError(f"non-uniform plans run 1F1B or GPipe stages, not the interleaved schedule "
                        f"({strategy.label()}); use vpp 1")
    options = StrategyTable.from_strategies([strategy.model_copy(update={"recompute": r}) for r in RECOMPUTE_CODES])
    lt = layer_times(model, cluster, workload, options, eff)
    main = "moe" if model.is_moe else "dense"
    leading = "dense" if model.is_moe and model.num_dense_layers else main
    time_s = np.stack([lt.layer_s[leading], lt.layer_s[main]])
    act = np.stack([activation_bytes_per_layer(model, workload, options, moe=leading == "moe"),
                    activation_bytes_per_layer(model, workload, options, moe=main == "moe")])
    tp, s = float(strategy.tp), strategy
    shard = float(s.dp * s.cp)
    expert_shard = max(shard / s.ep, 1.0)
    dense_layer = (model.attention_params() + (model.dense_mlp_params() if model.ffn_hidden else 0)) / tp
    if model.is_moe:
        experts = model.num_experts * model.expert_params()
        moe_layer = _sharded_bytes((model.attention_params() + model.moe_mlp_params() - experts) / tp, shard, s.zero, s.pp)
        moe_layer += _sharded_bytes(experts / (tp * s.ep), expert_shard, s.zero, s.pp)
    else:
        moe_layer = 0.0
    dense_bytes = _sharded_bytes(dense_layer, shard, s.zero, s.pp)
    state = np.array([dense_bytes if leading == "dense" else moe_layer, moe_layer if model.is_moe else dense_bytes])
    kind = np.full(model.num_layers, MAIN)
    if leading != main:
        kind[: model.num_dense_layers] = LEADING

    base = StrategyTable.from_strategies([strategy])
    cost = training_cost(model, cluster, workload, base, eff)
    m = float(num_microbatches(base, workload)[0])
    head_params = model.lm_head_params() + (model.vocab * model.hidden if model.tied_embeddings and s.pp > 1 else 0)
    tokens = workload.seq_len / s.cp * s.micro_batch
    in_last = m if (s.schedule == "gpipe" and s.pp > 1) else 1.0  # micro-batches of logits held (cost.memory)
    logits = LOGIT_BYTES * tokens * model.vocab / tp * in_last
    b = cost.breakdown
    return LayerCostTable(
        strategy=strategy,
        kind=kind,
        time_s=time_s,
        act_bytes=act,
        state_bytes=state,
        working_bytes=float(act[MAIN, 0]),
        first_time_s=float(lt.edge_comm_s[0]),
        last_time_s=float(lt.head_s[0] + lt.edge_comm_s[0]),
        first_bytes=_sharded_bytes(model.embedding_params() / tp, shard, s.zero, s.pp),
        last_bytes=_sharded_bytes(head_params / tp, shard, s.zero, s.pp) + logits,
        fixed_bytes=FRAMEWORK_OVERHEAD_BYTES + (float(cost.memory.buffers[0]) if s.pp == 1 else 0.0),
        in_flight=in_flight_per_stage(s, m),
        num_microbatches=m,
        other_s=float(b["pp_p2p"][0] + b["dp_comm"][0] + b["optimizer"][0]),
        tokens_per_step=float(workload.tokens_per_step),
    )


@dataclass(frozen=True)
class PricedPlans:
    """Figures of a population of non-uniform plans (one row per plan)."""

    step_time_s: np.ndarray
    stage_time_s: np.ndarray
    """[plan, stage] seconds per micro-batch."""
    stage_bytes: np.ndarray
    """[plan, stage] peak bytes per GPU."""
    tokens_per_s: np.ndarray

    @property
    def peak_bytes(self) -> np.ndarray:
        return self.stage_bytes.max(axis=1)


def step_time(table: LayerCostTable, stage_time_s: np.ndarray) -> np.ndarray:
    """m · slowest stage + (pp - 1) · mean stage (fill and drain) + the fixed terms (Narayanan et al. 2021, §2.2)."""
    pp = stage_time_s.shape[-1]
    return (table.num_microbatches * stage_time_s.max(axis=-1) + (pp - 1) * stage_time_s.mean(axis=-1)
            + table.other_s)


def price(table: LayerCostTable, bounds: np.ndarray, recompute: np.ndarray) -> PricedPlans:
    """Price plans given as stage bounds [plan, pp + 1] (stage s holds layers bounds[s] .. bounds[s+1]-1) and
    recomputation codes [plan, layer]."""
    bounds = np.atleast_2d(np.asarray(bounds, dtype=np.int64))
    recompute = np.atleast_2d(np.asarray(recompute, dtype=np.int64))
    rows = np.arange(table.num_layers)
    per_layer_time = table.layer_time_s()[rows, recompute]  # [plan, layer]
    per_layer_act = table.layer_act_bytes()[rows, recompute]
    per_layer_state = np.broadcast_to(table.state_bytes[table.kind], per_layer_time.shape)
    full = (recompute == FULL_CODE).astype(np.float64)

    def per_stage(x: np.ndarray) -> np.ndarray:
        prefix = np.concatenate([np.zeros((len(x), 1)), np.cumsum(x, axis=1)], axis=1)
        ends = np.take_along_axis(prefix, bounds, axis=1)
        return ends[:, 1:] - ends[:, :-1]

    stage_time = per_stage(per_layer_time) + table.edge_time_s()
    any_full = per_stage(full) > 0
    stage_bytes = (per_stage(per_layer_state) + table.in_flight * per_stage(per_layer_act)
                   + np.where(any_full, table.working_bytes, 0.0) + table.edge_bytes())
    step = step_time(table, stage_time)
    return PricedPlans(step, stage_time, stage_bytes, table.tokens_per_step / step)


def uniform_bounds(num_layers: int, pp: int) -> np.ndarray:
    """The split `cost.stages` prices for a uniform strategy (`stage_sizes`), as stage bounds [pp + 1]."""
    return np.concatenate([[0], np.cumsum(stage_sizes(num_layers, pp))]).astype(np.int64)
