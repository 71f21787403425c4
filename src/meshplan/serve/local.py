"""Predict a CPU serving run from a hardware profile measured in its own processes (layer 3 of hardware
knowledge: measured, not datasheet, not fitted).

The profile (GEMM FLOP/s, memory bytes/s per process, all-reduce α and bus bandwidth, dispatch time of one small
tensor op times the ops of one iteration) becomes a one-off
`GpuSpec` and cluster, with every efficiency factor 1 (the measurements already are achieved speeds) and no
engine overheads; the same iteration-time model as for GPUs then prices the static batch: prefill of all
prompts at once, then decode steps at the batch's mean context.
"""

from __future__ import annotations

import math

from meshplan.serve.cost import iteration_model
from meshplan.serve.deployment import Deployment, DeploymentTable
from meshplan.serve.efficiency import ServingEfficiency
from meshplan.specs.cluster import ClusterSpec
from meshplan.specs.gpu import GpuSpec
from meshplan.specs.model import ModelSpec

CPU_INTRA_EFFICIENCY = 0.8  # the comm model divides by Efficiency.intra_node_bandwidth (0.8 default); undo it


def profile_specs(profile: dict[str, float], processes: int) -> tuple[GpuSpec, ClusterSpec, ServingEfficiency]:
    flops = profile["gemm_flops"]
    gpu = GpuSpec(
        name="local CPU (measured profile)", vendor="nvidia", architecture="ampere",
        peak_flops={"bf16": flops, "fp16": flops, "fp32": flops}, hbm_bytes=1e12,
        hbm_bytes_per_s=profile["memory_bytes_per_s"], intra_node_bytes_per_s=1e12, intra_node_link="gloo (TCP)",
        default_gpus_per_node=max(processes, 1), default_inter_node_bytes_per_s=1e9, default_system="this machine",
        sources={"all": "measured in-process by meshplan run (serving mode)"},
    )
    steps = max(1.0, math.ceil(math.log2(max(processes, 1))))
    bus = profile.get("allreduce_bytes_per_s", math.inf)
    cluster = ClusterSpec(
        gpu=gpu, num_gpus=processes, gpus_per_node=max(processes, 1),
        intra_node_bytes_per_s=(bus / CPU_INTRA_EFFICIENCY) if math.isfinite(bus) else 1e15,
        inter_node_bytes_per_s=1e9, intra_node_latency_s=profile.get("allreduce_latency_s", 0.0) / (2.0 * steps),
    )
    # Engine overhead of this runner: framework dispatch time per op x ops per iteration (both measured/counted).
    overhead = profile.get("op_overhead_s", 0.0) * profile.get("ops_per_iteration", 0.0)
    eff = ServingEfficiency(compute={"ampere": 1.0}, hbm=1.0, low_precision_ratio=1.0, attention_ratio=1.0,
                            iteration_overhead_s={"trtllm": overhead}, request_overhead_s={"trtllm": 0.0},
                            sequence_overhead_s=0.0, runtime_bytes=0.0,
                            source="measured profile of this machine")
    return gpu, cluster, eff


def predict_static_batch(model: ModelSpec, tp: int, batch: int, isl: int, osl: int,
                         profile: dict[str, float]) -> tuple[float, float]:
    """(TTFT, TPOT) in seconds of a static batch in bf16 on `tp` processes of this machine."""
    _, cluster, eff = profile_specs(profile, tp)
    table = DeploymentTable.of([Deployment(tp=tp, precision="bf16", kv_dtype="bf16")])
    it = iteration_model(model, cluster, table, eff, "trtllm")
    ttft = float(it.time(0.0, 0.0, float(batch * isl), isl / 2.0)[0])
    tpot = float(it.time(float(batch), isl + osl / 2.0, 0.0, 0.0)[0])
    return ttft, tpot
