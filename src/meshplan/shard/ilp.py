"""The intra-operator ILP (Alpa, Zheng et al. 2022, §4.2), solved with scipy's `milp` (HiGHS).

Variables: a one-hot binary vector s_g per group (its strategy) and, per edge between groups u -> v, a matrix
e_uv of edge variables with marginal constraints Σ_j e_uv[i, j] = s_u[i] and Σ_i e_uv[i, j] = s_v[j]. With
one-hot marginals the only feasible e_uv is the outer product s_u s_vᵀ, so e_uv may stay continuous in [0, 1]:
only the s_g are integer. Objective: Σ_g c_g·s_g + Σ_uv R_uv·e_uv (compute + collectives + resharding, seconds
per step). Constraint: Σ_g m_g·s_g <= the per-device memory bound.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp  # type: ignore[import-untyped]
from scipy.sparse import coo_array  # type: ignore[import-untyped]

from meshplan.errors import PlanError
from meshplan.shard.problem import ShardingProblem

GB = 1e9  # bytes per displayed GB
DEFAULT_TIME_LIMIT_S = 60.0  # seconds HiGHS may search before returning its best plan


@dataclass(frozen=True)
class IlpSolution:
    """The chosen strategy index of each group, the objective, and what solving took."""

    choice: tuple[int, ...]
    objective_s: float
    memory_bytes: float
    num_vars: int
    num_binary: int
    num_constraints: int
    build_s: float
    solve_s: float
    optimal: bool
    """HiGHS proved optimality (False: the time limit stopped it with a feasible plan)."""


def memory_of(problem: ShardingProblem, choice: tuple[int, ...]) -> float:
    return float(sum(g.weight_bytes[k] + g.act_bytes[k] for g, k in zip(problem.groups, choice)))


def objective_of(problem: ShardingProblem, choice: tuple[int, ...]) -> float:
    """Seconds per step of a full choice: the ILP's objective evaluated directly."""
    total = sum(float(g.time_s[k]) for g, k in zip(problem.groups, choice))
    return total + sum(float(e.cost_s[choice[e.src], choice[e.dst]]) for e in problem.edges)


def least_memory(problem: ShardingProblem) -> float:
    """The smallest per-device memory any choice reaches (memory has no edge terms: per group minima)."""
    return float(sum(np.min(g.weight_bytes + g.act_bytes) for g in problem.groups))


def check_memory(problem: ShardingProblem, memory_bytes: float | None) -> None:
    if memory_bytes is None:
        return
    need = least_memory(problem)
    if need > memory_bytes:
        raise PlanError(f"the memory bound {memory_bytes / GB:,.2f} GB per device cannot be met: the leanest "
                        f"sharding needs {need / GB:,.2f} GB ({(need - memory_bytes) / GB:,.2f} GB more); raise "
                        "--memory or use a larger mesh")


def solve_ilp(problem: ShardingProblem, memory_bytes: float | None = None,
              time_limit_s: float = DEFAULT_TIME_LIMIT_S) -> IlpSolution:
    """The optimal choice under the memory bound (None: unbounded); a `PlanError` when the bound cannot be met."""
    check_memory(problem, memory_bytes)
    started = time.perf_counter()
    offsets, n = [], 0
    for g in problem.groups:
        offsets.append(n)
        n += g.num_strategies
    num_binary = n
    edge_offsets = []
    for e in problem.edges:
        edge_offsets.append(n)
        n += e.cost_s.size
    c = np.zeros(n)
    for g, off in zip(problem.groups, offsets):
        c[off:off + g.num_strategies] = g.time_s
    for e, off in zip(problem.edges, edge_offsets):
        c[off:off + e.cost_s.size] = e.cost_s.ravel()
    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0
    for g, off in zip(problem.groups, offsets):  # one strategy per group
        rows += [r] * g.num_strategies
        cols += list(range(off, off + g.num_strategies))
        vals += [1.0] * g.num_strategies
        lo.append(1.0)
        hi.append(1.0)
        r += 1
    for e, off in zip(problem.edges, edge_offsets):  # marginals of the edge variables
        ku, kv = e.cost_s.shape
        su, sv = offsets[e.src], offsets[e.dst]
        for i in range(ku):
            rows += [r] * (kv + 1)
            cols += [off + i * kv + j for j in range(kv)] + [su + i]
            vals += [1.0] * kv + [-1.0]
            r += 1
        for j in range(kv):
            rows += [r] * (ku + 1)
            cols += [off + i * kv + j for i in range(ku)] + [sv + j]
            vals += [1.0] * ku + [-1.0]
            r += 1
        lo += [0.0] * (ku + kv)
        hi += [0.0] * (ku + kv)
    if memory_bytes is not None:
        for g, off in zip(problem.groups, offsets):
            rows += [r] * g.num_strategies
            cols += list(range(off, off + g.num_strategies))
            vals += list((g.weight_bytes + g.act_bytes) / GB)  # GB keeps the row well scaled
        lo.append(-np.inf)
        hi.append(memory_bytes / GB)
        r += 1
    a = coo_array((vals, (rows, cols)), shape=(r, n)).tocsr()
    integrality = np.zeros(n)
    integrality[:num_binary] = 1
    built = time.perf_counter()
    res = milp(c, integrality=integrality, bounds=Bounds(0, 1), constraints=LinearConstraint(a, lo, hi),
               options={"time_limit": time_limit_s, "presolve": True})
    solved = time.perf_counter()
    if res.x is None:
        raise PlanError(f"the sharding ILP found no plan within {time_limit_s:.0f} s ({res.message}); raise "
                        "--memory or the time limit")
    choice = tuple(int(np.argmax(res.x[off:off + g.num_strategies])) for g, off in zip(problem.groups, offsets))
    return IlpSolution(choice=choice, objective_s=objective_of(problem, choice), memory_bytes=memory_of(problem, choice),
                       num_vars=n, num_binary=num_binary, num_constraints=r, build_s=built - started,
                       solve_s=solved - built, optimal=res.status == 0)


def brute_force(problem: ShardingProblem, memory_bytes: float | None = None, limit: int = 2_000_000) -> tuple[tuple[int, ...], float]:
    """Every combination of strategies, the cheapest that fits (the oracle for small graphs)."""
    sizes = [g.num_strategies for g in problem.groups]
    if math.prod(sizes) > limit:
        raise ValueError(f"{math.prod(sizes):,} combinations exceed the brute-force limit {limit:,}")
    best: tuple[tuple[int, ...], float] = ((), math.inf)
    for choice in itertools.product(*(range(k) for k in sizes)):
        if memory_bytes is not None and memory_of(problem, choice) > memory_bytes:
            continue
        value = objective_of(problem, choice)
        if value < best[1]:
            best = (choice, value)
    return best
