"""Random but well-formed per-layer cost tables for the non-uniform tests (a helper module, not a test)."""

from __future__ import annotations

import numpy as np

from meshplan.cost.nonuniform import LayerCostTable, in_flight_per_stage
from meshplan.strategy import Strategy


def synthetic_table(rng: np.random.Generator, layers: int, pp: int, leading: int = 0, m: float | None = None,
                    edges: bool = True) -> LayerCostTable:
    """A random but well-formed table: recomputation costs time and saves memory, as in the real model."""
    kind = np.ones(layers, dtype=np.int64)
    kind[:leading] = 0
    s = Strategy(dp=1, pp=pp)
    m = float(rng.integers(pp, 3 * pp + 1)) if m is None else m
    e = 1.0 if edges else 0.0
    return LayerCostTable(
        strategy=s, kind=kind,
        time_s=np.sort(rng.uniform(0.5, 2.0, (2, 3)), axis=1),
        act_bytes=-np.sort(-rng.uniform(0.0, 3.0, (2, 3)), axis=1),
        state_bytes=rng.uniform(0.0, 2.0, 2), working_bytes=float(rng.uniform(0.0, 2.0)),
        first_time_s=e * float(rng.uniform(0, 1)), last_time_s=e * float(rng.uniform(0, 2)),
        first_bytes=e * float(rng.uniform(0, 2)), last_bytes=e * float(rng.uniform(0, 2)), fixed_bytes=0.5,
        in_flight=in_flight_per_stage(s, m), num_microbatches=m, other_s=0.1, tokens_per_step=1000.0)
