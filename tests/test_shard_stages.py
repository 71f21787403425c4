"""Alpa's stage construction: the DP kernel against enumeration, and stages of a traced decoder."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from meshplan.shard.stages import INF, stage_dp, submesh_shapes


def _compositions(n: int) -> list[list[int]]:
    """Every split of n layers into contiguous non-empty stages (as stage lengths)."""
    out = []
    for cuts in itertools.product([0, 1], repeat=n - 1):
        lengths, run = [], 1
        for c in cuts:
            if c:
                lengths.append(run)
                run = 1
            else:
                run += 1
        out.append(lengths + [run])
    return out


def _brute(num_layers: int, num_devices: int, sizes: list[int], b: int, cost, once) -> float:  # type: ignore[no-untyped-def]
    best = INF
    for lengths in _compositions(num_layers):
        s = len(lengths)
        for subs in itertools.product(range(len(sizes)), repeat=s):
            if sum(sizes[i] for i in subs) != num_devices:
                continue
            start, times, extra = 0, [], 0.0
            for i, (length, sub) in enumerate(zip(lengths, subs)):
                times.append(cost(start, start + length, sub, min(s - i, b)))
                extra += once(start, start + length, sub)
                start += length
            if INF not in times:
                best = min(best, sum(times) + extra + (b - 1) * max(times))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_stage_dp_equals_enumeration(seed: int) -> None:
    rng = random.Random(seed)
    num_layers, num_devices = rng.randint(1, 5), rng.choice([2, 4, 8])
    sizes = [s for s in (1, 2, 4, 8) if s <= num_devices]
    b = rng.choice([1, 2, 4, 8])
    table, sync = {}, {}
    for l in range(num_layers):
        for r in range(l + 1, num_layers + 1):
            for s, size in enumerate(sizes):
                base = (r - l) * rng.uniform(0.5, 1.5) / size ** rng.uniform(0.5, 1.0)
                sync[l, r, s] = rng.uniform(0.0, 0.3) * (r - l)  # once per step
                for k in range(1, 9):  # more micro-batches in flight may not fit
                    table[l, r, s, k] = INF if rng.random() < 0.1 * k / 4 else base
    cost = lambda l, r, s, k: table[l, r, s, k]
    once = lambda l, r, s: sync[l, r, s]
    total, plan = stage_dp(num_layers, num_devices, sizes, b, cost, once)
    expected = _brute(num_layers, num_devices, sizes, b, cost, once)
    assert total == pytest.approx(expected, rel=1e-12) if expected < INF else total == INF
    if total < INF:  # the plan is contiguous, covers the layers and uses every device once
        assert [p[0] for p in plan] == [0] + [p[1] for p in plan[:-1]] and plan[-1][1] == num_layers
        assert sum(sizes[p[2]] for p in plan) == num_devices
        times = [cost(*p) for p in plan]
        assert sum(times) + sum(once(*p[:3]) for p in plan) + (b - 1) * max(times) == pytest.approx(total)


def test_submesh_shapes_follow_alpa() -> None:
    assert submesh_shapes((8,)) == [(1,), (2,), (4,), (8,)]
    assert submesh_shapes((2, 4)) == [(1, 1), (1, 2), (1, 4), (2, 4)]


def test_stages_of_a_traced_decoder() -> None:
    pytest.importorskip("torch")
    from meshplan.shard.mesh import LogicalMesh
    from meshplan.shard.stages import plan_stages
    from meshplan.shard.trace import trace_decoder
    from meshplan.specs import load_gpu
    from meshplan.specs.model import ModelSpec

    spec = ModelSpec(name="llama-4l", num_layers=4, hidden=2048, num_heads=16, num_kv_heads=8, head_dim=128,
                     vocab=32000, gated_mlp=True, tied_embeddings=False, ffn_hidden=6144)
    graph = trace_decoder(spec, 2, 1024)
    mesh = LogicalMesh.build((2,), load_gpu("H100"))
    plan = plan_stages(graph, mesh, num_microbatches=8, memory_bytes=80e9)
    assert plan.stages[0].first_layer == 0 and plan.stages[-1].last_layer == 3
    assert sum(math.prod(s.submesh) for s in plan.stages) == 2
    times = [s.time_s for s in plan.stages]
    assert plan.step_time_s == pytest.approx(sum(times) + sum(s.grad_sync_s for s in plan.stages) + 7 * max(times))
    assert all(s.in_flight == min(len(plan.stages) - i, 8) for i, s in enumerate(plan.stages))
