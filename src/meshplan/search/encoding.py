"""The fixed-length encoding of non-uniform plans that the genetic and policy-gradient searchers share.

A plan is (base, offsets, recompute): `base` picks one of the candidate base strategies (the per-axis choice:
dp, tp, pp, cp, ep, micro-batch, ZeRO), `offsets[k]` moves the k-th stage boundary of the even split by that
many layers (slots past the base's pp - 1 are ignored), `recompute[l]` is layer l's recomputation code. Decoding
repairs boundaries into a valid split (every stage at least one layer), so every genome is a plan; plans over
the memory limit get a negative fitness, the further over the lower.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from meshplan.cost.nonuniform import fits, uniform_bounds
from meshplan.errors import PlanError
from meshplan.search.nonuniform import NonUniformPlan, Pricer, plan_of


def repair_bounds(even: np.ndarray, offsets: np.ndarray, num_layers: int) -> np.ndarray:
    """Stage bounds [plan, pp + 1] from the even split moved by `offsets` [plan, pp - 1]: clipped so that cut k
    leaves k layers before it and pp - k after, then made strictly increasing."""
    pp = len(even) - 1
    k = np.arange(1, pp)
    cuts = np.clip(even[1:-1] + offsets, k, num_layers - pp + k)
    cuts = np.maximum.accumulate(cuts - k, axis=1) + k
    n = len(offsets)
    return np.concatenate([np.zeros((n, 1), np.int64), cuts, np.full((n, 1), num_layers, np.int64)], axis=1)


@dataclass
class Tracker:
    """Evaluations spent and the best objective over time."""

    started: float = field(default_factory=time.perf_counter)
    evaluations: int = 0
    best_fitness: float = -np.inf
    best: tuple[int, np.ndarray, np.ndarray] | None = None
    history: list[tuple[int, float, float]] = field(default_factory=list)
    """(evaluations, seconds, best tokens/s) each time the best improved."""


@dataclass(frozen=True)
class PlanSpace:
    tables: Sequence[Pricer]
    memory_limit_bytes: float
    max_offset: int
    """Offsets range over -max_offset .. max_offset layers."""

    def __post_init__(self) -> None:
        if not self.tables:
            raise PlanError("no base strategy to search: nothing valid fits; see `meshplan plan` for why")
        if len({t.num_layers for t in self.tables}) != 1:
            raise PlanError("candidate base strategies must share one model")

    @property
    def num_layers(self) -> int:
        return self.tables[0].num_layers

    @property
    def num_cuts(self) -> int:
        return max(t.num_stages for t in self.tables) - 1

    def fitness(self, base: np.ndarray, offsets: np.ndarray, recompute: np.ndarray,
                tracker: Tracker) -> tuple[np.ndarray, np.ndarray]:
        """(fitness, tokens/s) per plan: tokens/s when it fits, minus the overflow ratio when it does not."""
        fit = np.empty(len(base))
        tps = np.zeros(len(base))
        for b in np.unique(base):
            rows = np.flatnonzero(base == b)
            table = self.tables[int(b)]
            even = uniform_bounds(table.num_layers, table.num_stages)
            bounds = repair_bounds(even, offsets[rows, : table.num_stages - 1], table.num_layers)
            p = table.price(bounds, recompute[rows])
            ok = fits(p.peak_bytes, self.memory_limit_bytes)
            tps[rows] = np.where(ok, p.tokens_per_s, 0.0)
            fit[rows] = np.where(ok, p.tokens_per_s, -p.peak_bytes / self.memory_limit_bytes)
        tracker.evaluations += len(base)
        i = int(np.argmax(fit))
        if fit[i] > tracker.best_fitness:
            tracker.best_fitness = float(fit[i])
            tracker.best = (int(base[i]), offsets[i].copy(), recompute[i].copy())
            if fit[i] > 0:
                tracker.history.append((tracker.evaluations, time.perf_counter() - tracker.started, float(fit[i])))
        return fit, tps

    def decode(self, base: int, offsets: np.ndarray, recompute: np.ndarray) -> NonUniformPlan:
        table = self.tables[base]
        even = uniform_bounds(table.num_layers, table.num_stages)
        bounds = repair_bounds(even, offsets[None, : table.num_stages - 1], table.num_layers)[0]
        return plan_of(table, bounds, recompute)

    def best_plan(self, tracker: Tracker) -> NonUniformPlan | None:
        if tracker.best is None or tracker.best_fitness <= 0:
            return None
        return self.decode(*tracker.best)
