"""The search interface: what is asked, what comes back, and how candidates are ranked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from meshplan.cost.efficiency import Efficiency
from meshplan.cost.training import TrainingCost
from meshplan.space import SpaceConstraints
from meshplan.specs import ClusterSpec, ModelSpec, TrainWorkload
from meshplan.specs.base import Frozen
from meshplan.strategy import StrategyTable

Objective = Literal["throughput", "memory"]


class SearchRequest(Frozen):
    """One search: a model on one cluster for one workload, under constraints, for an objective."""

    model: ModelSpec
    cluster: ClusterSpec
    workload: TrainWorkload
    constraints: SpaceConstraints = SpaceConstraints()
    objective: Objective = "throughput"
    """throughput: most tokens/s among plans that fit; memory: lowest peak memory per GPU."""
    memory_headroom: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Fraction of GPU memory kept free: a plan fits when peak <= (1 - headroom) x capacity."""
    top_k: int = Field(default=10, ge=0)
    """Plans to keep, best first; 0 keeps every plan that fits."""
    efficiency: Efficiency

    @property
    def usable_bytes(self) -> float:
        return self.cluster.gpu.hbm_bytes * (1.0 - self.memory_headroom)


@dataclass(frozen=True)
class Ranked:
    """The best rows found, best first: strategies, their costs, and their flat index in the space."""

    table: StrategyTable
    cost: TrainingCost
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.table)

    def take(self, rows: np.ndarray) -> Ranked:
        return Ranked(self.table.take(rows), self.cost.take(rows), self.index[rows])

    def concat(self, other: Ranked) -> Ranked:
        table = StrategyTable(**{k: np.concatenate([getattr(self.table, k), getattr(other.table, k)])
                                 for k in self.table.__dict__})
        return Ranked(table, self.cost.concat(other.cost), np.concatenate([self.index, other.index]))


@dataclass(frozen=True)
class SearchResult:
    request: SearchRequest
    ranked: Ranked
    """Top-k plans that fit, best first (empty when nothing fits)."""
    space_size: int
    """Strategies enumerated (the product of the axes)."""
    num_valid: int
    """Strategies that passed every rule and were priced by the cost model."""
    num_fit: int
    """Valid strategies whose peak memory fits the usable memory."""
    pruned: dict[str, int]
    """Strategies pruned, by reason (rules, then memory)."""
    least_memory: Ranked | None = None
    """The valid strategy with the lowest peak memory (kept to explain what would make something fit)."""
    seconds: float = 0.0
    algorithm: str = "exhaustive"
    notes: list[str] = field(default_factory=list)


def objective_key(cost: TrainingCost, objective: Objective) -> np.ndarray:
    """Smaller is better."""
    if objective == "throughput":
        return -cost.tokens_per_s
    return cost.peak_memory_bytes


def rank_order(cost: TrainingCost, index: np.ndarray, objective: Objective) -> np.ndarray:
    """Stable ranking: the objective, then peak memory (or step time), then enumeration order."""
    second = cost.peak_memory_bytes if objective == "throughput" else cost.step_time_s
    return np.lexsort((index, second, objective_key(cost, objective)))
