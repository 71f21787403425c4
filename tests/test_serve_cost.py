"""Serving cost model: hand-derived capacity and iteration terms, and the properties they must have."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.cost.comm import Links, all_reduce_time
from meshplan.cost.efficiency import default_efficiency
from meshplan.serve.capacity import capacity, kv_bytes_per_token, weight_bytes_per_gpu
from meshplan.serve.cost import iteration_model
from meshplan.serve.deployment import Deployment, DeploymentTable
from meshplan.serve.efficiency import ServingEfficiency
from meshplan.specs import load_gpu, load_model, make_cluster

EFF = ServingEfficiency(compute={"hopper": 0.5}, hbm=0.8, iteration_overhead_s={"trtllm": 0.0},
                        sequence_overhead_s=0.0, request_overhead_s={"trtllm": 0.0})


def _table(**kw: object) -> DeploymentTable:
    return DeploymentTable.of([Deployment(**kw)])  # type: ignore[arg-type]


def test_kv_bytes_per_token_llama2_70b_tp4() -> None:
    # 80 layers x (K and V) x 8 KV heads / tp 4 x head_dim 128 x 2 bytes (bf16) = 81,920 bytes per token per GPU
    model = load_model("Llama-2-70B")
    assert kv_bytes_per_token(model, _table(tp=4))[0] == pytest.approx(81_920)
    # tp 16 > 8 KV heads: each GPU keeps one whole head (replicated), not half of one: 80 x 2 x 1 x 128 x 2
    assert kv_bytes_per_token(model, _table(tp=16))[0] == pytest.approx(40_960)


def test_kv_bytes_per_token_mla_is_the_latent() -> None:
    # DeepSeek-R1 caches kv_lora_rank 512 + rope 64 values per layer, 61 layers, fp8 = 1 byte: 35,136 bytes
    model = load_model("DeepSeek-R1")
    assert kv_bytes_per_token(model, _table(tp=8, precision="fp8", kv_dtype="fp8"))[0] == pytest.approx(61 * 576)


def test_weights_split_over_tp_pp_and_experts_over_the_stage() -> None:
    model = load_model("Qwen3-30B-A3B")
    experts = model.expert_params_total()
    dense = model.total_params() - experts
    # tp 2, attn_dp 2, ep 4: non-expert part over tp (2), experts over tp*attn_dp (4); bf16 = 2 bytes
    got = weight_bytes_per_gpu(model, _table(tp=2, attn_dp=2, ep=4))[0]
    assert got == pytest.approx(2.0 * (dense / 2 + experts / 4))


def test_capacity_holds_what_memory_leaves() -> None:
    model, gpu = load_model("Llama-2-70B"), load_gpu("H100")
    t = _table(tp=4)
    cap = capacity(model, gpu, t, memory_fraction=0.9, runtime_bytes=3e9)
    left = (80e9 - cap.weights_bytes[0] - cap.activation_bytes[0] - 3e9) * 0.9
    assert cap.kv_tokens[0] == pytest.approx(left / 81_920)
    # fp16 70B on one 80 GB GPU does not fit
    assert not capacity(model, gpu, _table(tp=1), 0.9, 3e9).fits[0]


def test_decode_at_batch_one_reads_the_weights() -> None:
    # Llama-3.1-8B bf16, tp1 on H100: a decode step reads every weight but the input embedding once:
    # (total - embedding) params x 2 bytes / (3.35e12 B/s x 0.8)
    model, gpu = load_model("Llama-3.1-8B"), load_gpu("H100")
    it = iteration_model(model, make_cluster(gpu, 1), _table(tp=1), EFF, "trtllm")
    expected = (model.total_params() - model.embedding_params()) * 2.0 / (3.35e12 * 0.8)
    terms = it.terms(1.0, 1000.0, 0.0, 0.0)
    assert terms["linear"][0] == pytest.approx(expected)
    assert terms["tp_comm"][0] == 0.0


def test_prefill_is_compute_bound() -> None:
    # 8192 prompt tokens of Llama-3.1-8B: 2 FLOPs per active non-embedding parameter per token over
    # 989e12 x 0.5 FLOP/s, well above the time to read the weights once
    model, gpu = load_model("Llama-3.1-8B"), load_gpu("H100")
    it = iteration_model(model, make_cluster(gpu, 1), _table(tp=1), EFF, "trtllm")
    lin = it.terms(0.0, 0.0, 8192.0, 4096.0)["linear"][0]
    lm_head = model.vocab * model.hidden
    flops = 2.0 * (model.active_params() - model.embedding_params() - lm_head) * 8192
    assert lin == pytest.approx(flops / (989e12 * 0.5))
    assert lin > float(it.dense_weights_s[0])


def test_tp_latency_dominates_small_batches() -> None:
    # Llama-3.1-70B at tp8, batch 1: 160 all-reduces of 16 KB inside one node take the engines' one-shot kernel,
    # 2α = 2 x 5 us each (NCCL's tree would need 2 log2(8) x 5 us); their latency outweighs the bytes, and a
    # bandwidth-only roofline would miss most of the communication time.
    model, gpu = load_model("Llama-3.1-70B"), load_gpu("H100")
    it = iteration_model(model, make_cluster(gpu, 8), _table(tp=8), EFF, "trtllm")
    assert float(it.tp_latency_s[0]) == pytest.approx(160 * 2 * 5e-6)
    assert float(it.tp_latency_s[0]) > 10 * float(it.tp_s_per_token[0])


def test_tp_across_nodes_keeps_nccl_latency() -> None:
    # tp16 spans two 8-GPU nodes: no one-shot kernel; the latency is NCCL's, as meshplan.cost.comm prices it.
    model, gpu = load_model("Llama-3.1-405B"), load_gpu("H100")
    cluster = make_cluster(gpu, 16)
    it = iteration_model(model, cluster, _table(tp=16), EFF, "trtllm")
    one = np.ones(1)
    nccl = all_reduce_time(0.0 * one, 16 * one, one, Links.of(cluster, default_efficiency()))
    assert float(it.tp_latency_s[0]) == pytest.approx(2 * model.num_layers * float(nccl[0]))


def test_engine_without_one_shot_kernel_pays_nccl_tree_steps() -> None:
    # An engine listed in allreduce_step_latency_s (NCCL all-reduces, no one-shot kernel) pays 2 log2(k) tree
    # steps per all-reduce: Llama-2-70B (80 layers, 2 all-reduces each) at tp8 with 27 us steps:
    # 160 x 2 x 3 x 27e-6 s = 25.92 ms per decode step; at tp2 one step each way: 160 x 2 x 1 x 27e-6 = 8.64 ms.
    eff = EFF.model_copy(update={"allreduce_step_latency_s": {"unknown": 27e-6},
                                 "iteration_overhead_s": {"trtllm": 0.0, "unknown": 0.0}})
    model, gpu = load_model("Llama-2-70B"), load_gpu("A100")
    tp8 = iteration_model(model, make_cluster(gpu, 8), _table(tp=8), eff, "unknown")
    tp2 = iteration_model(model, make_cluster(gpu, 2), _table(tp=2), eff, "unknown")
    assert float(tp8.tp_latency_s[0]) == pytest.approx(25.92e-3)
    assert float(tp2.tp_latency_s[0]) == pytest.approx(8.64e-3)
    # the engines with a one-shot kernel keep 2 alpha per all-reduce on the same cluster
    assert float(iteration_model(model, make_cluster(gpu, 8), _table(tp=8), eff, "trtllm").tp_latency_s[0]) == \
        pytest.approx(160 * 2 * 5e-6)


def test_iteration_time_grows_with_load() -> None:
    model, gpu = load_model("Llama-3.1-70B"), load_gpu("H200")
    it = iteration_model(model, make_cluster(gpu, 2), _table(tp=2, precision="fp8", kv_dtype="fp8"), EFF, "trtllm")
    batches = np.array([1.0, 8.0, 64.0, 512.0])
    times = it.time(batches, 2048.0, 0.0, 0.0)
    assert np.all(np.diff(times) > 0)
    assert it.time(16.0, 2048.0, 2048.0, 1024.0)[0] > it.time(16.0, 2048.0, 0.0, 0.0)[0]


def test_vectorised_equals_one_at_a_time() -> None:
    model, gpu = load_model("Mixtral-8x7B"), load_gpu("H100")
    deps = [Deployment(tp=t, pp=p, precision="fp8", kv_dtype="fp8") for t in (1, 2, 4) for p in (1, 2)]
    cluster = make_cluster(gpu, 8)
    many = iteration_model(model, cluster, DeploymentTable.of(deps), EFF, "trtllm").time(32.0, 1500.0, 500.0, 250.0)
    one = [iteration_model(model, cluster, DeploymentTable.of([d]), EFF, "trtllm").time(32.0, 1500.0, 500.0, 250.0)[0]
           for d in deps]
    assert many == pytest.approx(one)


def test_moe_activation_traffic_per_token() -> None:
    # Mixtral-8x7B at tp1: every token visits top-2 experts in each of 32 MoE layers and streams
    # 2 x 4096 (in, out) + 6 x 14336 (gate/up out, activation in/out, down in) bf16 values per visit:
    # 32 x 2 x 94,208 x 2 bytes = 12.06 MB per token, at 0.8 of the datasheet HBM bandwidth.
    model, gpu = load_model("Mixtral-8x7B"), load_gpu("H100")
    it = iteration_model(model, make_cluster(gpu, 1), _table(tp=1), EFF, "trtllm")
    assert float(it.moe_act_s_per_token[0]) == pytest.approx(32 * 2 * 94_208 * 2 / (gpu.hbm_bytes_per_s * 0.8))
    dense = iteration_model(load_model("Llama-3.1-8B"), make_cluster(gpu, 1), _table(tp=1), EFF, "trtllm")
    assert float(dense.moe_act_s_per_token[0]) == 0.0


def test_dense_and_expert_gemms_take_their_own_roofline() -> None:
    # Mixtral-8x7B at tp1, bf16, 0.5 of the H100's bf16 peak: the routed experts' FLOPs per token are
    # 2 x 32 layers x top-2 x 3 x 4096 x 14336 (gate, up, down) and belong to the expert GEMMs alone.
    model, gpu = load_model("Mixtral-8x7B"), load_gpu("H100")
    it = iteration_model(model, make_cluster(gpu, 1), _table(tp=1), EFF, "trtllm")
    flops_s = gpu.peak("bf16") * 0.5
    assert float(it.expert_linear_s_per_token[0]) == pytest.approx(2 * 32 * 2 * 3 * 4096 * 14336 / flops_s)
    # A 256-token prefill: the dense GEMMs (attention projections, router) are compute-bound, while 256 x 2 / 8 =
    # 64 tokens per expert leave the experts bound by reading their weights; the linear term is the sum of the two
    # bounds, more than one roofline over all GEMMs would give.
    tokens = 256.0
    dense = max(tokens * float(it.linear_s_per_token[0]), float(it.dense_weights_s[0]))
    touched = 1.0 - (1.0 - 2 / 8) ** tokens
    expert_bytes = float(it.expert_weights_s[0]) * touched + tokens * float(it.moe_act_s_per_token[0])
    expert = max(tokens * float(it.expert_linear_s_per_token[0]), expert_bytes)
    assert tokens * float(it.linear_s_per_token[0]) > float(it.dense_weights_s[0])
    assert expert == pytest.approx(expert_bytes)
    linear = float(it.terms(0.0, 0.0, tokens, tokens / 2)["linear"][0])
    assert linear == pytest.approx(dense + expert)
    one_roofline = max(tokens * float(it.linear_s_per_token[0] + it.expert_linear_s_per_token[0]),
                       float(it.dense_weights_s[0]) + expert_bytes)
    assert linear > one_roofline
