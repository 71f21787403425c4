"""Stage-partition dynamic programming: the optimal contiguous split of layers into pipeline stages.

PipeDream (Narayanan et al. 2019, §3.1) and Alpa's inter-operator pass (Zheng et al. 2022, §5.2) split a chain
of layers into stages so that the slowest stage — which sets the pace of a pipeline in steady state — is as
fast as possible, with every stage inside its memory. Here stage s of S holds, under 1F1B, the activations of
S - s micro-batches (Narayanan et al. 2021, §2.2.1), so later stages can take more layers; the first stage
also runs the embedding and the last the LM head and the loss.

`partition_table` is the pure kernel: f[s][j] = min over i of max(f[s-1][i], cost(i..j on stage s)) over a
precomputed [stage, i, j] cost tensor (inf where a stage would break its memory limit), vectorised over i and j —
O(S·L²) work in S numpy steps; `partition_min_sum` is its companion for the total. `partition` builds the
tensor from per-layer costs with prefix sums; `search.nonuniform` builds it with per-layer recomputation.
`partition_brute_force` enumerates every split and is the oracle of the tests.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from meshplan.errors import PlanError


@dataclass(frozen=True)
class LayerCosts:
    """Per-layer costs of one micro-batch, plus what the first and last stage carry on top."""

    time_s: np.ndarray
    """Forward + backward time of each layer for one micro-batch, seconds."""
    state_bytes: np.ndarray
    """Resident bytes of each layer: weights, gradients, optimizer states."""
    activation_bytes: np.ndarray
    """Activation bytes each layer keeps per micro-batch in flight."""
    first_time_s: float = 0.0
    """Extra time of the first stage (embedding), seconds."""
    last_time_s: float = 0.0
    """Extra time of the last stage (LM head and loss), seconds."""
    first_bytes: float = 0.0
    """Extra bytes of the first stage (embedding table and its states)."""
    last_bytes: float = 0.0
    """Extra bytes of the last stage (LM head, its states, logits)."""

    def __post_init__(self) -> None:
        n = len(self.time_s)
        if n == 0 or len(self.state_bytes) != n or len(self.activation_bytes) != n:
            raise PlanError("layer costs need one time, state and activation figure per layer (and at least one layer)")


@dataclass(frozen=True)
class Partition:
    """Stage s holds layers bounds[s] .. bounds[s+1]-1."""

    bounds: tuple[int, ...]
    stage_time_s: np.ndarray
    stage_bytes: np.ndarray

    @property
    def bottleneck_s(self) -> float:
        return float(self.stage_time_s.max())

    @property
    def layers_per_stage(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.bounds, self.bounds[1:]))


def _stage_cost(c: LayerCosts, num_stages: int, stage: int, i: np.ndarray, j: np.ndarray,
                t: np.ndarray, st: np.ndarray, act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Time and bytes of layers i..j-1 (prefix-sum arrays t, st, act) placed on `stage`."""
    in_flight = num_stages - stage  # 1F1B: the first stage holds S micro-batches, the last one
    time = t[j] - t[i] + (c.first_time_s if stage == 0 else 0.0) + (c.last_time_s if stage == num_stages - 1 else 0.0)
    memory = (st[j] - st[i]) + in_flight * (act[j] - act[i])
    memory = memory + (c.first_bytes if stage == 0 else 0.0) + (c.last_bytes if stage == num_stages - 1 else 0.0)
    return time, memory


def _prefix(x: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.asarray(x, dtype=np.float64))])


def stage_cost_tensor(c: LayerCosts, num_stages: int, memory_limit_bytes: float) -> np.ndarray:
    """[stage, i, j]: time of layers i..j-1 on that stage, inf where empty or over the memory limit."""
    n = len(c.time_s)
    t, st, act = _prefix(c.time_s), _prefix(c.state_bytes), _prefix(c.activation_bytes)
    i_idx, j_idx = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")  # [i, j]
    out = np.full((num_stages, n + 1, n + 1), np.inf)
    for s in range(num_stages):
        time, memory = _stage_cost(c, num_stages, s, i_idx, j_idx, t, st, act)
        out[s] = np.where((i_idx < j_idx) & (memory <= memory_limit_bytes), time, np.inf)
    return out


def partition_table(cost: np.ndarray) -> tuple[tuple[int, ...], float] | None:
    """The pure min-max kernel over a precomputed [stage, i, j] cost tensor (inf: not allowed): the contiguous split
    of the n = cost.shape[-1] - 1 layers with the smallest slowest stage, as (bounds, slowest); None if none.

    f[s][j] = min over i of max(f[s-1][i], cost[s-1, i, j]), vectorised over i and j: S numpy steps of O(n²)."""
    num_stages, n = cost.shape[0], cost.shape[-1] - 1
    f = np.full((num_stages + 1, n + 1), np.inf)  # f[s, j]: best bottleneck with the first j layers on s stages
    arg = np.zeros((num_stages + 1, n + 1), dtype=np.int64)
    f[0, 0] = 0.0
    for s in range(num_stages):
        candidate = np.maximum(f[s][:, None], cost[s])  # [i, j]
        f[s + 1] = candidate.min(axis=0)
        arg[s + 1] = candidate.argmin(axis=0)
    if not np.isfinite(f[num_stages, n]):
        return None
    return _backtrack(arg, num_stages, n), float(f[num_stages, n])


def partition_min_sum(cost: np.ndarray, cap: float) -> tuple[tuple[int, ...], float] | None:
    """The split with the smallest total stage cost, every stage at most `cap`: (bounds, total); None if none."""
    num_stages, n = cost.shape[0], cost.shape[-1] - 1
    g = np.full((num_stages + 1, n + 1), np.inf)
    arg = np.zeros((num_stages + 1, n + 1), dtype=np.int64)
    g[0, 0] = 0.0
    for s in range(num_stages):
        candidate = g[s][:, None] + np.where(cost[s] <= cap, cost[s], np.inf)
        g[s + 1] = candidate.min(axis=0)
        arg[s + 1] = candidate.argmin(axis=0)
    if not np.isfinite(g[num_stages, n]):
        return None
    return _backtrack(arg, num_stages, n), float(g[num_stages, n])


def _backtrack(arg: np.ndarray, num_stages: int, n: int) -> tuple[int, ...]:
    bounds = [n]
    for s in range(num_stages, 0, -1):
        bounds.append(int(arg[s, bounds[-1]]))
    return tuple(bounds[::-1])


def partition(c: LayerCosts, num_stages: int, memory_limit_bytes: float) -> Partition:
    """The split of the layers into `num_stages` contiguous, non-empty stages with the smallest slowest stage,
    every stage within `memory_limit_bytes`; `PlanError` (with the shortfall) when no split fits."""
    n = len(c.time_s)
    if not 1 <= num_stages <= n:
        raise PlanError(f"num_stages={num_stages} must be between 1 and the number of layers ({n})")
    t, st, act = _prefix(c.time_s), _prefix(c.state_bytes), _prefix(c.activation_bytes)
    found = partition_table(stage_cost_tensor(c, num_stages, memory_limit_bytes))
    if found is None:
        short = _least_excess(c, num_stages, t, st, act) - memory_limit_bytes
        raise PlanError(f"no split of {n} layers into {num_stages} stages fits {memory_limit_bytes / 1e9:.2f} GB per "
                        f"stage: the best split still needs {short / 1e9:.2f} GB more on its fullest stage; "
                        "use more stages, recomputation or more memory")
    return _describe(c, num_stages, found[0], t, st, act)


def _least_excess(c: LayerCosts, num_stages: int, t: np.ndarray, st: np.ndarray, act: np.ndarray) -> float:
    """The smallest possible 'fullest stage' over all splits (a min-max DP on memory)."""
    n = len(c.time_s)
    g = np.full((num_stages + 1, n + 1), np.inf)
    g[0, 0] = 0.0
    i_idx, j_idx = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    for s in range(num_stages):
        _, memory = _stage_cost(c, num_stages, s, i_idx, j_idx, t, st, act)
        cand = np.where(i_idx < j_idx, np.maximum(g[s][:, None], memory), np.inf)
        g[s + 1] = cand.min(axis=0)
    return float(g[num_stages, n])


def _describe(c: LayerCosts, num_stages: int, bounds: tuple[int, ...], t: np.ndarray, st: np.ndarray,
              act: np.ndarray) -> Partition:
    times, mems = [], []
    for s in range(num_stages):
        tt, mm = _stage_cost(c, num_stages, s, np.array(bounds[s]), np.array(bounds[s + 1]), t, st, act)
        times.append(float(tt))
        mems.append(float(mm))
    return Partition(bounds, np.array(times), np.array(mems))


def partition_brute_force(c: LayerCosts, num_stages: int, memory_limit_bytes: float) -> Partition | None:
    """Every split, for tests: the feasible one with the smallest slowest stage (None when none fits)."""
    n = len(c.time_s)
    t, st, act = _prefix(c.time_s), _prefix(c.state_bytes), _prefix(c.activation_bytes)
    best: Partition | None = None
    for cuts in itertools.combinations(range(1, n), num_stages - 1):
        p = _describe(c, num_stages, (0, *cuts, n), t, st, act)
        if np.all(p.stage_bytes <= memory_limit_bytes) and (best is None or p.bottleneck_s < best.bottleneck_s):
            best = p
    return best
