"""Per-operator strategies, their costs, and the ILP: the layouts the issue names (Megatron's MLP, attention by
heads, data parallelism for a small model with a large batch, DP x TP on a 2D mesh), agreement with brute force,
and the memory bound."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from shard_models import HfAttention, HfDecoder, Mlp, on_meta

from meshplan.errors import PlanError
from meshplan.shard.graph import OpGraph
from meshplan.shard.ilp import brute_force, least_memory, memory_of, objective_of, solve_ilp
from meshplan.shard.mesh import LogicalMesh, parse_mesh
from meshplan.shard.planner import ShardRequest, shard, summarise
from meshplan.shard.problem import ShardingProblem, build_problem
from meshplan.shard.strategies import STATE_BYTES_PER_PARAM, TRAIN_PASSES, describe, evaluate, reshard
from meshplan.shard.trace import trace_decoder, trace_module
from meshplan.specs import load_gpu
from meshplan.specs.model import ModelSpec

H100 = load_gpu("H100")


def _mesh(shape: tuple[int, ...]) -> LogicalMesh:
    return LogicalMesh.build(shape, H100)


def _mlp(tokens: tuple[int, int], hidden: int, ffn: int) -> OpGraph:
    return trace_module(on_meta(Mlp, hidden, ffn), (torch.zeros(*tokens, hidden, device="meta"),))


def _chosen(problem: ShardingProblem, choice: tuple[int, ...]) -> dict[str, str]:
    return {g.leader: describe(problem.graph.by_name[g.leader], g.assigns[g.leader][k])
            for g, k in zip(problem.groups, choice)}


@pytest.mark.parametrize("n", [2, 4])
def test_mlp_block_is_megatron_column_then_row_with_one_all_reduce(n: int) -> None:
    # 2048 tokens of hidden 4096 through 4096 -> 16384 -> 4096: weights (2 x 64M) dwarf activations (8M elements),
    # so tensor parallelism beats data parallelism, and column-then-row needs one forward all-reduce.
    g = _mlp((1, 2048), 4096, 16384)
    problem = build_problem(g, _mesh((n,)))
    sol = solve_ilp(problem)
    assert _chosen(problem, sol.choice) == {"x": "replicated", "up": "column@0", "down": "row@0"}
    req = ShardRequest(model=_placeholder_model(), gpu=H100, mesh=(n,), global_batch=1, seq_len=2048)
    result = summarise(req, problem, sol, H100.hbm_bytes)
    forward = [c for c in result.collectives if c.why == "partial sums"]
    assert [(c.kind, c.count, c.bytes_per_step) for c in forward] == [("all-reduce", 1, 2048 * 4096 * 4)]
    assert not [c for c in result.collectives if c.why == "reshard"]
    # backward: the input gradient of the column-parallel layer is partial (Megatron's f), nothing else
    assert {c.why for c in result.collectives} == {"partial sums", "input gradient"}


def test_attention_is_sharded_by_heads() -> None:
    g = trace_module(on_meta(HfAttention, 4096, 32, 2048), (torch.zeros(1, 2048, 4096, device="meta"),))
    problem = build_problem(g, _mesh((4,)))
    chosen = _chosen(problem, solve_ilp(problem).choice)
    assert chosen["q_proj"] == chosen["k_proj"] == chosen["v_proj"] == "column@0"
    assert chosen["matmul"] == chosen["matmul_1"] == "heads@0"  # QKᵀ and P·V per head
    assert chosen["o_proj"] == "row@0"


def test_small_model_with_a_large_batch_is_data_parallel() -> None:
    # 1M tokens through a 1024 -> 4096 -> 1024 MLP: activations dwarf the 8M weights, so every operator splits the
    # batch and only the weight gradients are all-reduced.
    problem = build_problem(_mlp((512, 2048), 1024, 4096), _mesh((4,)))
    sol = solve_ilp(problem)
    assert set(_chosen(problem, sol.choice).values()) == {"batch@0"}
    kinds = {(c.why, c.kind) for g, k in zip(problem.groups, sol.choice) for m in g.members for c in g.costs[m][k].comm}
    assert kinds == {("weight gradient", "all-reduce")}


def test_2d_mesh_is_data_parallel_on_one_axis_tensor_parallel_on_the_other() -> None:
    g = trace_module(on_meta(HfDecoder, 50257, 1024, 16, 4, 1024), (torch.zeros(8, 1024, dtype=torch.long, device="meta"),))
    problem = build_problem(g, _mesh((2, 4)))
    chosen = _chosen(problem, solve_ilp(problem).choice)
    # the MLP of every block: column then row on axis 0, batch split on axis 1
    assert chosen["h_0_mlp_0"] == "column@0 batch@1" and chosen["h_0_mlp_2"] == "row@0 batch@1"
    assert all("batch@1" in s for name, s in chosen.items() if name.startswith("h_0_") and "proj" in name)


CASES = [((2,), 1, 256, 1024, None), ((4,), 8, 64, 256, None), ((2, 2), 4, 128, 512, None), ((2,), 2, 512, 2048, 0.55),
         ((2, 2), 2, 256, 1024, 0.4)]


@pytest.mark.parametrize(("shape", "batch", "hidden", "ffn", "squeeze"), CASES)
def test_ilp_equals_brute_force(shape: tuple[int, ...], batch: int, hidden: int, ffn: int, squeeze: float | None) -> None:
    problem = build_problem(_mlp((batch, 64), hidden, ffn), _mesh(shape))
    bound = None
    if squeeze is not None:  # a bound between the leanest plan and the unbounded optimum's memory: it binds
        free = solve_ilp(problem)
        bound = least_memory(problem) + squeeze * (free.memory_bytes - least_memory(problem))
    sol = solve_ilp(problem, bound)
    _choice, best = brute_force(problem, bound)
    assert sol.objective_s == pytest.approx(best, rel=1e-9)
    if bound is not None:
        assert memory_of(problem, sol.choice) <= bound


def test_ilp_equals_brute_force_on_attention_with_its_edges() -> None:
    g = trace_module(on_meta(HfAttention, 256, 4, 64), (torch.zeros(2, 64, 256, device="meta"),))
    problem = build_problem(g, _mesh((2,)))
    assert len(problem.edges) >= 4
    assert solve_ilp(problem).objective_s == pytest.approx(brute_force(problem)[1], rel=1e-9)


def test_merged_layers_cost_what_the_full_graph_costs_for_the_same_choice() -> None:
    spec = _placeholder_model()
    g = trace_decoder(spec, 2, 512)
    mesh = _mesh((4,))
    merged, full = build_problem(g, mesh, merge=True), build_problem(g, mesh, merge=False)
    sol = solve_ilp(merged)
    # spread the merged choice over every layer of the full problem: same objective
    by_leader = {g_.leader: k for g_, k in zip(merged.groups, sol.choice)}
    spread = tuple(by_leader[merged.rep[g_.leader]] for g_ in full.groups)
    assert objective_of(full, spread) == pytest.approx(sol.objective_s, rel=1e-9)
    assert solve_ilp(full).objective_s <= sol.objective_s * (1 + 1e-9)  # the unmerged ILP may only do better
    assert len(merged.groups) < len(full.groups)


def test_linear_column_parallel_cost_by_hand() -> None:
    seq = torch.nn.Sequential(torch.nn.Linear(1024, 4096, bias=False)).to("meta")
    graph = trace_module(seq, (torch.zeros(4, 1024, device="meta"),))
    op = graph.by_name["_0"]
    mesh = _mesh((2,))
    n, _k = op.operands[1].labels
    cost = evaluate(op, (n,), mesh, lambda _: True)
    # 2·4·1024·4096 FLOPs forward, half per device, x3 for forward + backward (fp32 here: 4-byte elements)
    flops = 2 * 4 * 1024 * 4096
    moved = (4 * 1024 + 1024 * 4096 + 4 * 4096) * 4
    assert cost.compute_s == pytest.approx(TRAIN_PASSES * mesh.device.op_time(flops / 2, moved / 2))
    # backward: x's gradient is partial over the column shards -> all-reduce of x (4·1024·4 bytes)
    assert [(c.kind, c.why, c.nbytes) for c in cost.comm] == [("all-reduce", "input gradient", 4 * 1024 * 4)]
    assert cost.weight_bytes == 1024 * 4096 / 2 * STATE_BYTES_PER_PARAM
    assert cost.act_bytes == 4 * 4096 / 2 * 4


def test_reshard_costs_by_hand() -> None:
    mesh = _mesh((4,))  # one H100 node: NVLink 450 GB/s x 0.8 = 360 GB/s effective, α = 5 µs per step
    shard0, rep, shard1 = ((0,), ()), ((), ()), ((), (0,))
    (gather,) = reshard(shard0, rep, (8, 1024), 2, True, mesh)
    # ring all-gather of the 16 KiB result: (p-1)/p·n/bw + (p-1)·α
    assert gather.seconds == pytest.approx(3 / 4 * 16384 / 360e9 + 3 * 5e-6)
    assert reshard(rep, shard0, (8, 1024), 2, False, mesh) == ()  # a local slice, no gradient to gather
    (back,) = reshard(rep, shard0, (8, 1024), 2, True, mesh)
    assert back.kind == "all-gather" and back.nbytes == 16384
    (swap,) = reshard(shard0, shard1, (8, 1024), 2, True, mesh)
    assert swap.kind == "all-to-all" and swap.seconds == pytest.approx(2 * mesh.all_to_all(4096, 0))


def test_memory_bound_that_cannot_be_met_says_by_how_much() -> None:
    req = ShardRequest(model=_placeholder_model(), gpu=H100, mesh=(2,), global_batch=2, seq_len=512, memory_bytes=1e8)
    with pytest.raises(PlanError, match=r"needs [\d.]+ GB \([\d.]+ GB more\); raise --memory"):
        shard(req)


def test_a_tighter_bound_shards_more() -> None:
    g = _mlp((32, 256), 2048, 8192)  # data parallel when memory is free: replicated weights
    problem = build_problem(g, _mesh((4,)))
    free = solve_ilp(problem, None)
    tight = solve_ilp(problem, least_memory(problem) * 1.01)
    assert tight.memory_bytes < free.memory_bytes and tight.objective_s >= free.objective_s


@pytest.mark.parametrize("text", ["2x", "0x4", "a", "2x2x2", "-2"])
def test_bad_mesh_strings(text: str) -> None:
    with pytest.raises(PlanError, match="--mesh"):
        parse_mesh(text)


def test_result_time_is_the_ilp_objective() -> None:
    r = shard(ShardRequest(model=_placeholder_model(), gpu=H100, mesh=(2, 2), global_batch=8, seq_len=512))
    assert r.step_time_s == pytest.approx(r.ilp["objective_s"], rel=1e-9)
    assert r.step_time_s == pytest.approx(r.compute_s + r.comm_s + r.reshard_s)
    assert r.num_layer_classes == 1 and r.memory_bytes <= r.memory_bound_bytes


def _placeholder_model() -> ModelSpec:
    return ModelSpec(name="llama-4l", num_layers=4, hidden=2048, num_heads=16, num_kv_heads=8, head_dim=128,
                     vocab=32000, gated_mlp=True, tied_embeddings=False, ffn_hidden=6144)
