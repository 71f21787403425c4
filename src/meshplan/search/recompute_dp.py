"""Per-layer activation recomputation under a memory budget: a multiple-choice knapsack solved by DP.

Each layer picks one option (none / selective / full, in the order of the columns): option k of layer l keeps
`mem[l, k]` units of activations and costs `time[l, k]` seconds of recomputation. Minimise the total time with
the total memory within the budget — the per-layer choice of Checkmate (Jain et al. 2020) reduced to a chain,
as Galvatron does. The kernel is exact on integer memory units; `quantize` turns bytes into units, rounding up
so that a choice it returns always fits in bytes.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from meshplan.errors import PlanError


@dataclass(frozen=True)
class RecomputeChoice:
    option: np.ndarray
    """Chosen option (column) per layer."""
    time_s: float
    memory_units: int


def quantize(nbytes: np.ndarray, budget_bytes: float, resolution: int = 4096) -> tuple[np.ndarray, int]:
    """(memory in units, budget in units) with unit = budget / resolution bytes; memory rounded up."""
    unit = budget_bytes / resolution
    return np.ceil(np.asarray(nbytes, dtype=np.float64) / unit).astype(np.int64), resolution


def choose_recompute(time_s: np.ndarray, mem_units: np.ndarray, budget_units: int) -> RecomputeChoice:
    """The cheapest per-layer choice within the budget; `PlanError` with the shortfall when none fits."""
    time_s = np.asarray(time_s, dtype=np.float64)
    mem = np.asarray(mem_units, dtype=np.int64)
    if time_s.shape != mem.shape or time_s.ndim != 2 or np.any(mem < 0):
        raise PlanError("recomputation options need matching (layers x options) time and non-negative memory tables")
    least = int(mem.min(axis=1).sum())
    if least > budget_units:
        raise PlanError(f"even the least-memory choice needs {least} units, {least - budget_units} over the budget of "
                        f"{budget_units}; more memory, more pipeline stages or a smaller micro-batch is needed")
    layers, options = mem.shape
    size = budget_units + 1
    best = np.full(size, np.inf)  # best[b]: least time with exactly b units used so far
    best[0] = 0.0
    pick = np.zeros((layers, size), dtype=np.int16)
    for layer in range(layers):
        candidates = np.full((options, size), np.inf)
        for k in range(options):
            w = int(mem[layer, k])
            if w < size:
                candidates[k, w:] = best[: size - w] + time_s[layer, k]
        pick[layer] = candidates.argmin(axis=0)
        best = candidates.min(axis=0)
    used = int(np.argmin(best))
    total = float(best[used])
    choice = np.zeros(layers, dtype=np.int64)
    b = used
    for layer in range(layers - 1, -1, -1):
        k = int(pick[layer, b])
        choice[layer] = k
        b -= int(mem[layer, k])
    return RecomputeChoice(choice, total, used)


def choose_recompute_brute_force(time_s: np.ndarray, mem_units: np.ndarray, budget_units: int) -> RecomputeChoice | None:
    """Every combination, for tests (None when none fits)."""
    layers, options = np.shape(mem_units)
    best: RecomputeChoice | None = None
    for combo in itertools.product(range(options), repeat=layers):
        idx = np.arange(layers), np.array(combo)
        used = int(np.asarray(mem_units)[idx].sum())
        if used > budget_units:
            continue
        total = float(np.asarray(time_s)[idx].sum())
        if best is None or total < best.time_s - 1e-12 or (math.isclose(total, best.time_s) and used < best.memory_units):
            best = RecomputeChoice(np.array(combo), total, used)
    return best
