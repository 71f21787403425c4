"""`Strategy`: how one training job is spread over the GPUs, and the rules that make a strategy valid.

The device mesh has the named axes `pp, dp, cp, tp` (outermost first; inner axes on neighbouring GPUs), so
`dp * tp * pp * cp == num_gpus`. Expert parallelism is carved out of `dp x cp` for the MoE layers, as
Megatron-Core and torchtitan do: `ep` must divide `dp * cp`, and experts keep the tensor-parallel degree
of the dense layers (expert tensor parallel = tp).

Every rule is written once, over columns of a `StrategyTable`, so that it checks one strategy or a million.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from meshplan.errors import PlanError
from meshplan.specs.base import Frozen
from meshplan.specs.cluster import ClusterSpec
from meshplan.specs.model import ModelSpec
from meshplan.specs.workload import TrainWorkload

Recompute = Literal["none", "selective", "full"]
Schedule = Literal["1f1b", "interleaved", "gpipe"]
RECOMPUTE_CODES: tuple[Recompute, ...] = ("none", "selective", "full")
SCHEDULE_CODES: tuple[Schedule, ...] = ("1f1b", "interleaved", "gpipe")
INT_AXES = ("dp", "tp", "pp", "cp", "ep", "vpp", "micro_batch", "zero")


class Strategy(Frozen):
    """One point of the training strategy space."""

    dp: int = Field(gt=0)
    """Data-parallel degree (model replicas, or ZeRO/FSDP shards)."""
    tp: int = Field(default=1, gt=0)
    """Tensor-parallel degree (Megatron column/row split of every layer)."""
    pp: int = Field(default=1, gt=0)
    """Pipeline-parallel degree (stages)."""
    cp: int = Field(default=1, gt=0)
    """Context-parallel degree (the sequence split across ranks, ring attention)."""
    ep: int = Field(default=1, gt=0)
    """Expert-parallel degree (routed experts split across ranks of dp x cp)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism: norms/dropout split over tp; all-gather + reduce-scatter replace all-reduce."""
    vpp: int = Field(default=1, gt=0)
    """Virtual pipeline stages (model chunks) per rank; > 1 means the interleaved 1F1B schedule."""
    micro_batch: int = Field(default=1, gt=0)
    """Sequences per micro-batch on one data-parallel rank."""
    zero: int = Field(default=1, ge=0, le=3)
    """ZeRO stage: 0 none, 1 optimizer states sharded (Megatron distributed optimizer), 2 + gradients, 3 + parameters (FSDP)."""
    recompute: Recompute = "none"
    """Activation recomputation: none, selective (attention core; Korthikanti et al. 2022), or full (every layer)."""
    schedule: Schedule = "1f1b"
    """Pipeline schedule: 1F1B, interleaved 1F1B (needs vpp > 1), or GPipe (all forwards, then all backwards)."""

    @property
    def num_gpus(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    def label(self) -> str:
        """A compact one-line description, e.g. `dp8 tp8 pp4 vpp2 mb1 z1 sp`; defaults (recompute none, the
        1F1B or interleaved schedule that vpp implies) are left out."""
        parts = [f"dp{self.dp}", f"tp{self.tp}", f"pp{self.pp}"]
        parts += [f"{k}{getattr(self, k)}" for k in ("cp", "ep", "vpp") if getattr(self, k) > 1]
        parts += [f"mb{self.micro_batch}", f"z{self.zero}"]
        if self.recompute != "none":
            parts.append(f"rc={self.recompute}")
        if self.schedule == "gpipe":
            parts.append("gpipe")
        return " ".join(parts + (["sp"] if self.sequence_parallel else []))


@dataclass(frozen=True)
class StrategyTable:
    """Strategies as columns: one numpy array per field, all of one length. A single strategy is one row."""

    dp: np.ndarray
    tp: np.ndarray
    pp: np.ndarray
    cp: np.ndarray
    ep: np.ndarray
    vpp: np.ndarray
    micro_batch: np.ndarray
    zero: np.ndarray
    sequence_parallel: np.ndarray
    """bool"""
    recompute: np.ndarray
    """int code: index into RECOMPUTE_CODES"""
    schedule: np.ndarray
    """int code: index into SCHEDULE_CODES"""

    def __len__(self) -> int:
        return int(self.dp.shape[0])

    @classmethod
    def from_strategies(cls, strategies: Sequence[Strategy]) -> StrategyTable:
        cols: dict[str, np.ndarray] = {k: np.array([getattr(s, k) for s in strategies], dtype=np.int64) for k in INT_AXES}
        cols["sequence_parallel"] = np.array([s.sequence_parallel for s in strategies], dtype=bool)
        cols["recompute"] = np.array([RECOMPUTE_CODES.index(s.recompute) for s in strategies], dtype=np.int64)
        cols["schedule"] = np.array([SCHEDULE_CODES.index(s.schedule) for s in strategies], dtype=np.int64)
        return cls(**cols)

    def row(self, i: int) -> Strategy:
        """Row `i` back as a `Strategy` record."""
        values = {k: int(getattr(self, k)[i]) for k in INT_AXES}
        return Strategy(
            **values,
            sequence_parallel=bool(self.sequence_parallel[i]),
            recompute=RECOMPUTE_CODES[int(self.recompute[i])],
            schedule=SCHEDULE_CODES[int(self.schedule[i])],
        )

    def take(self, index: np.ndarray) -> StrategyTable:
        """The rows selected by a boolean mask or an index array."""
        return StrategyTable(**{k: v[index] for k, v in self.__dict__.items()})


@dataclass(frozen=True)
class Rule:
    """A validity rule: `violated(table, model, cluster, workload)` is a boolean column; `reason` explains it."""

    name: str
    reason: str
    fix: str
    violated: Callable[[StrategyTable, ModelSpec, ClusterSpec, TrainWorkload], np.ndarray]


def _moe_layers(model: ModelSpec) -> int:
    return model.num_moe_layers


RULES: tuple[Rule, ...] = (
    Rule("gpu_count", "dp*tp*pp*cp differs from the GPU count", "choose degrees whose product is --num-gpus",
         lambda t, m, c, w: t.dp * t.tp * t.pp * t.cp != c.num_gpus),
    Rule("heads_tp", "attention heads not divisible by tp", "use a tp that divides the number of heads",
         lambda t, m, c, w: m.num_heads % t.tp != 0),
    Rule("kv_heads_tp", "KV heads neither divisible by tp nor a divisor of it",
         "use a tp that divides the KV heads, or a multiple of them (KV heads are then replicated)",
         lambda t, m, c, w: (m.num_kv_heads % t.tp != 0) & (t.tp % m.num_kv_heads != 0)),
    Rule("ffn_tp", "FFN width not divisible by tp", "use a tp that divides the FFN hidden size",
         lambda t, m, c, w: ((m.ffn_hidden % t.tp) != 0) | ((m.moe_ffn_hidden % t.tp) != 0)),
    Rule("tp_node", "tp spans more than one node",
         "keep tp <= GPUs per node (tensor parallelism needs NVLink), or pass --allow-cross-node-tp",
         lambda t, m, c, w: (t.tp > c.gpus_per_node) & (not c.allow_cross_node_tp)),
    Rule("layers_pp", "more pipeline stages than layers", "use pp <= the number of layers",
         lambda t, m, c, w: t.pp > m.num_layers),
    Rule("layers_vpp", "fewer layers than model chunks (pp*vpp)", "use pp*vpp <= the number of layers",
         lambda t, m, c, w: (t.vpp > 1) & (m.num_layers < t.pp * t.vpp)),
    Rule("vpp_schedule", "vpp > 1 needs the interleaved schedule (and interleaved needs vpp > 1, pp > 1)",
         "set --vpp 1 for 1F1B/GPipe, or --vpp > 1 with pp > 1 for interleaved",
         lambda t, m, c, w: ((t.vpp > 1) != (t.schedule == SCHEDULE_CODES.index("interleaved")))
         | ((t.vpp > 1) & (t.pp == 1))),
    Rule("schedule_pp", "a pipeline schedule other than 1F1B needs pp > 1 (without stages they are the same)",
         "use --schedule 1f1b when pp is 1",
         lambda t, m, c, w: (t.schedule == SCHEDULE_CODES.index("gpipe")) & (t.pp == 1)),
    Rule("batch_lt_dp", "global batch smaller than dp*micro_batch (every data-parallel rank needs a micro-batch)",
         "raise the global batch, or lower dp or the micro-batch",
         lambda t, m, c, w: w.global_batch < t.dp * t.micro_batch),
    Rule("batch_dp", "global batch not divisible by dp*micro_batch", "choose dp and micro-batch that divide the global batch",
         lambda t, m, c, w: w.global_batch % (t.dp * t.micro_batch) != 0),
    Rule("interleaved_microbatches", "interleaved schedule needs the number of micro-batches to be a multiple of pp",
         "use a global batch / (dp*micro-batch) that is a multiple of pp, or the 1f1b schedule",
         lambda t, m, c, w: (t.vpp > 1) & ((w.global_batch // np.maximum(t.dp * t.micro_batch, 1)) % t.pp != 0)),
    Rule("seq_cp", "sequence length not divisible by 2*cp (load-balanced causal ring attention)",
         "use a cp with seq_len % (2*cp) == 0",
         lambda t, m, c, w: (t.cp > 1) & (w.seq_len % (2 * t.cp) != 0)),
    Rule("seq_tp_sp", "sequence length not divisible by tp under sequence parallelism", "use a tp that divides seq_len",
         lambda t, m, c, w: t.sequence_parallel & (w.seq_len % (t.tp * t.cp) != 0)),
    Rule("sp_needs_tp", "sequence parallelism needs tp > 1", "drop --sequence-parallel or raise tp",
         lambda t, m, c, w: t.sequence_parallel & (t.tp == 1)),
    Rule("ep_dense", "expert parallelism on a dense model", "set ep 1 for a dense model",
         lambda t, m, c, w: (t.ep > 1) & (m.num_experts == 0)),
    Rule("ep_experts", "experts not divisible by ep", "use an ep that divides the number of experts",
         lambda t, m, c, w: (t.ep > 1) & (m.num_experts > 0) & (max(m.num_experts, 1) % t.ep != 0)),
    Rule("ep_dp", "ep does not divide dp*cp (ep is carved out of the data-parallel ranks)",
         "use an ep that divides dp*cp",
         lambda t, m, c, w: (t.dp * t.cp) % t.ep != 0),
)


def violations(table: StrategyTable, model: ModelSpec, cluster: ClusterSpec, workload: TrainWorkload,
               rules: Sequence[Rule] = RULES) -> dict[str, np.ndarray]:
    """For each rule, the boolean column of rows it rejects."""
    return {r.name: np.asarray(r.violated(table, model, cluster, workload), dtype=bool) & np.ones(len(table), bool)
            for r in rules}


def valid_mask(table: StrategyTable, model: ModelSpec, cluster: ClusterSpec, workload: TrainWorkload) -> np.ndarray:
    """Rows that break no rule."""
    bad = np.zeros(len(table), dtype=bool)
    for column in violations(table, model, cluster, workload).values():
        bad |= column
    return ~bad


def check_strategy(strategy: Strategy, model: ModelSpec, cluster: ClusterSpec, workload: TrainWorkload) -> None:
    """Raise `PlanError` naming the first rule `strategy` breaks, with its values and the fix."""
    table = StrategyTable.from_strategies([strategy])
    for rule in RULES:
        if bool(np.asarray(rule.violated(table, model, cluster, workload)).reshape(-1)[0]):
            raise PlanError(f"invalid strategy {strategy.label()}: {rule.reason} "
                            f"({_context(rule.name, strategy, model, cluster, workload)}); {rule.fix}")


def _context(rule: str, s: Strategy, model: ModelSpec, cluster: ClusterSpec, workload: TrainWorkload) -> str:
    """The values a rule compares, for the error message."""
    return {
        "gpu_count": f"dp*tp*pp*cp={s.num_gpus}, num_gpus={cluster.num_gpus}",
        "heads_tp": f"heads={model.num_heads}, tp={s.tp}",
        "kv_heads_tp": f"kv_heads={model.num_kv_heads}, tp={s.tp}",
        "ffn_tp": f"ffn_hidden={model.ffn_hidden or model.moe_ffn_hidden}, tp={s.tp}",
        "tp_node": f"tp={s.tp}, gpus_per_node={cluster.gpus_per_node}",
        "layers_pp": f"layers={model.num_layers}, pp={s.pp}",
        "layers_vpp": f"layers={model.num_layers}, pp*vpp={s.pp * s.vpp}",
        "vpp_schedule": f"vpp={s.vpp}, pp={s.pp}, schedule={s.schedule}",
        "batch_dp": f"global_batch={workload.global_batch}, dp*micro_batch={s.dp * s.micro_batch}",
        "batch_lt_dp": f"global_batch={workload.global_batch}, dp*micro_batch={s.dp * s.micro_batch}",
        "interleaved_microbatches": f"micro-batches={workload.global_batch // (s.dp * s.micro_batch)}, pp={s.pp}",
        "seq_cp": f"seq_len={workload.seq_len}, cp={s.cp}",
        "seq_tp_sp": f"seq_len={workload.seq_len}, tp*cp={s.tp * s.cp}",
        "sp_needs_tp": f"tp={s.tp}",
        "schedule_pp": f"schedule={s.schedule}, pp={s.pp}",
        "ep_dense": f"ep={s.ep}, model {model.name} has no experts",
        "ep_experts": f"experts={model.num_experts}, ep={s.ep}",
        "ep_dp": f"ep={s.ep}, dp*cp={s.dp * s.cp}",
    }.get(rule, f"model {model.name}")
