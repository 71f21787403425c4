"""A genetic algorithm over non-uniform plans, vectorised with numpy (one cost-model call per generation).

Each generation: tournament selection of parents, uniform crossover of the boundary offsets and of the per-layer
recomputation, then mutation (a boundary moved by one layer, a layer's recomputation redrawn, a run of layers
set to one option, now and then another base strategy), and the elite carried over. The first population
holds the uniform plans of every base (even split, one recomputation), so the search starts no worse than the
uniform optimum of those bases, then random plans. pymoo's GA was tried on the same encoding and cost model:
see `benchmarks/search_algorithms.py` for why this one is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost.nonuniform import NUM_OPTIONS
from meshplan.search.encoding import PlanSpace, Tracker


@dataclass(frozen=True)
class GeneticOptions:
    population: int = 64
    evaluations: int = 20_000
    """Budget: plans priced in all."""
    tournament: int = 3
    elite: int = 4
    base_mutation: float = 0.05
    """Chance that a child switches to another base strategy."""
    seed: int = 0


def initial_population(space: PlanSpace, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bases = len(space.tables)
    base = rng.integers(bases, size=n)
    offsets = rng.integers(-space.max_offset, space.max_offset + 1, size=(n, space.num_cuts))
    recompute = rng.integers(NUM_OPTIONS, size=(n, space.num_layers))
    seeds = [(b, r) for b in range(bases) for r in range(NUM_OPTIONS)][:n]
    for row, (b, r) in enumerate(seeds):
        base[row], offsets[row], recompute[row] = b, 0, r
    return base, offsets, recompute


def search_genetic(space: PlanSpace, options: GeneticOptions = GeneticOptions()) -> Tracker:
    rng = np.random.default_rng(options.seed)
    tracker = Tracker()
    n, cuts, layers, bases = options.population, space.num_cuts, space.num_layers, len(space.tables)
    base, offsets, recompute = initial_population(space, rng, n)
    fit, _ = space.fitness(base, offsets, recompute, tracker)
    rows = np.arange(n)
    while tracker.evaluations + n <= options.evaluations:
        contenders = rng.integers(n, size=(2, n, options.tournament))
        p1, p2 = (c[rows, np.argmax(fit[c], axis=1)] for c in contenders)
        take_o = rng.random((n, cuts)) < 0.5
        take_r = rng.random((n, layers)) < 0.5
        child_base = base[p1].copy()
        child_off = np.where(take_o, offsets[p1], offsets[p2])
        child_rec = np.where(take_r, recompute[p1], recompute[p2])
        # mutation: move a boundary by one layer, redraw a layer's recomputation, set a run of layers alike
        step = rng.integers(-1, 2, size=(n, cuts)) * (rng.random((n, cuts)) < 1.0 / max(cuts, 1))
        child_off = np.clip(child_off + step, -space.max_offset, space.max_offset)
        redraw = rng.random((n, layers)) < 1.0 / layers
        child_rec = np.where(redraw, rng.integers(NUM_OPTIONS, size=(n, layers)), child_rec)
        start, length = rng.integers(layers, size=n), rng.integers(1, max(2, layers // 4), size=n)
        run = (np.arange(layers) >= start[:, None]) & (np.arange(layers) < (start + length)[:, None])
        run &= (rng.random(n) < 0.2)[:, None]
        child_rec = np.where(run, rng.integers(NUM_OPTIONS, size=n)[:, None], child_rec)
        if bases > 1:
            switch = rng.random(n) < options.base_mutation
            child_base = np.where(switch, rng.integers(bases, size=n), child_base)
        child_fit, _ = space.fitness(child_base, child_off, child_rec, tracker)
        elite = np.argsort(-fit)[: options.elite]
        worst = np.argsort(child_fit)[: options.elite]
        child_base[worst], child_off[worst], child_rec[worst], child_fit[worst] = (
            base[elite], offsets[elite], recompute[elite], fit[elite])
        base, offsets, recompute, fit = child_base, child_off, child_rec, child_fit
    return tracker
