"""`EstimateRequest` → `Estimate`: price one training strategy (the Python API behind `meshplan estimate`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field, ValidationError

from meshplan.cost.efficiency import Efficiency, default_efficiency
from meshplan.cost.memory import num_microbatches
from meshplan.cost.training import BREAKDOWN_SOURCES, TrainingCost, training_cost
from meshplan.errors import PlanError, first_error
from meshplan.specs import ClusterSpec, ModelSpec, TrainWorkload, load_gpu, load_model, make_cluster
from meshplan.specs.base import Frozen
from meshplan.specs.workload import Precision
from meshplan.strategy import Recompute, Schedule, Strategy, StrategyTable, check_strategy

SCHEMA_VERSION = 1


class JobRequest(Frozen):
    """What is trained, on which GPUs and links, with which workload: the part every command shares."""

    model: str
    """Preset name or path to a Hugging Face config.json."""
    gpu: str | None = None
    """GPU catalog name or alias; may be left out when `hardware` is given."""
    hardware: str | None = None
    """Path of a measured hardware profile (`meshplan profile --out`): the devices and their achieved speeds come
    from it instead of the catalog's datasheet, and its (calibrated) factors replace the fitted efficiency."""
    global_batch: int = Field(gt=0)
    """Sequences per optimizer step."""
    seq_len: int = Field(gt=0)
    """Tokens per sequence."""
    gpus_per_node: int | None = Field(default=None, gt=0)
    """GPUs per scale-up domain (default: the GPU's usual system)."""
    intra_node_gbps: float | None = Field(default=None, gt=0)
    """Scale-up bandwidth per GPU per direction, GB/s (default: datasheet)."""
    inter_node_gbps: float | None = Field(default=None, gt=0)
    """Network bandwidth per GPU per direction, GB/s (default: the usual system's NICs)."""
    precision: Precision = "bf16"
    """bf16, fp16 or fp8."""
    flash_attention: bool = True
    """Fused attention kernels (no stored score matrix)."""
    tp_comm_overlap: bool = False
    """Tensor-parallel collectives overlapped with GEMMs (Megatron-Core --tp-comm-overlap)."""
    allow_cross_node_tp: bool = False
    """Let tensor parallelism span nodes."""

    def specs(self, num_gpus: int) -> tuple[ModelSpec, ClusterSpec, TrainWorkload]:
        """The model, a cluster of `num_gpus` and the workload; bad combinations raise `PlanError`."""
        try:
            model = load_model(self.model)
            if self.hardware is not None:
                given = [flag for flag, v in (("--gpu", self.gpu), ("--gpus-per-node", self.gpus_per_node),
                                              ("--intra-node-gbps", self.intra_node_gbps),
                                              ("--inter-node-gbps", self.inter_node_gbps)) if v is not None]
                if given:
                    raise PlanError(f"{', '.join(given)} and --hardware both describe the devices; the profile "
                                    f"measured them: drop {', '.join(given)}")
                cluster = self._profiled_cluster(num_gpus)
                gpu = cluster.gpu
            elif self.gpu is None:
                raise PlanError("missing --gpu: name a GPU (see `meshplan gpus`) or pass --hardware hw.json")
            else:
                gpu = load_gpu(self.gpu)
                cluster = make_cluster(
                    gpu, num_gpus, gpus_per_node=self.gpus_per_node,
                    intra_node_bytes_per_s=self.intra_node_gbps * 1e9 if self.intra_node_gbps else None,
                    inter_node_bytes_per_s=self.inter_node_gbps * 1e9 if self.inter_node_gbps else None,
                    allow_cross_node_tp=self.allow_cross_node_tp,
                )
        except ValidationError as exc:  # a spec's own validator refused a combination of values
            cause = exc.errors()[0].get("ctx", {}).get("error")
            raise PlanError(str(cause) if isinstance(cause, PlanError) else _one_line(exc)) from None
        gpu.peak(self.precision)  # a GPU without the dtype is an input error, raised here
        workload = TrainWorkload(global_batch=self.global_batch, seq_len=self.seq_len, precision=self.precision,
                                 flash_attention=self.flash_attention, tp_comm_overlap=self.tp_comm_overlap)
        return model, cluster, workload

    def _profiled_cluster(self, num_gpus: int) -> ClusterSpec:
        from meshplan.measure.hardware import load_profile, local_cluster

        assert self.hardware is not None
        profile = load_profile(self.hardware)
        cluster = local_cluster(profile, num_gpus)
        return cluster.model_copy(update={"allow_cross_node_tp": self.allow_cross_node_tp})

    def efficiency(self) -> Efficiency:
        """The factors to price with: the hardware profile's (measured, or calibrated), else the fitted defaults."""
        if self.hardware is None:
            return default_efficiency()
        from meshplan.measure.hardware import load_profile, profile_efficiency

        return profile_efficiency(load_profile(self.hardware))


class EstimateRequest(JobRequest):
    """Everything `meshplan estimate` needs; the JSON keys of `--batch` lines are these field names."""

    num_gpus: int = Field(gt=0)
    """GPUs in the job."""
    dp: int | None = Field(default=None, gt=0)
    """Data-parallel degree (default: num_gpus / (tp·pp·cp))."""
    tp: int = Field(default=1, gt=0)
    pp: int = Field(default=1, gt=0)
    cp: int = Field(default=1, gt=0)
    ep: int = Field(default=1, gt=0)
    vpp: int = Field(default=1, gt=0)
    micro_batch: int = Field(default=1, gt=0)
    zero: int = Field(default=1, ge=0, le=3)
    recompute: Recompute = "none"
    sequence_parallel: bool | None = None
    """Default: on whenever tp > 1."""
    schedule: Schedule | None = None
    """Default: interleaved when vpp > 1, else 1f1b."""


class Estimate(Frozen):
    """Predicted figures for one strategy, with the breakdown and where each figure came from."""

    schema_version: int = SCHEMA_VERSION
    model: str
    gpu: str
    num_gpus: int
    strategy: Strategy
    num_microbatches: int
    step_time_s: float
    tokens_per_s: float
    tokens_per_s_per_gpu: float
    tflops_per_gpu: float
    """Model TFLOP/s per GPU (no recomputation counted; PaLM App. B)."""
    mfu: float
    hfu: float
    peak_memory_bytes: float
    memory_capacity_bytes: float
    fits: bool
    breakdown: dict[str, float]
    """Seconds per step by term; they sum to step_time_s."""
    memory_breakdown: dict[str, float]
    """Bytes per GPU by kind on the worst pipeline stage; they sum to peak_memory_bytes."""
    provenance: dict[str, str]
    """Which layer of knowledge produced each input figure."""
    formulas: dict[str, str]
    """The source of each breakdown term's formula."""


def _one_line(exc: ValidationError) -> str:
    where, msg, value = first_error(exc)
    shown = "" if isinstance(value, dict) else f"={value!r}"
    return f"{where or 'input'}{shown}: {msg}"


def parse_request(fields: dict[str, Any]) -> EstimateRequest:
    """An `EstimateRequest` from plain values; bad values raise `PlanError` with one line."""
    try:
        return EstimateRequest.model_validate(fields)
    except ValidationError as exc:
        raise PlanError(f"{_one_line(exc)}; fix that field") from None


def resolve(request: EstimateRequest) -> tuple[ModelSpec, ClusterSpec, TrainWorkload, Strategy]:
    """Specs and strategy from a request, with defaults filled in and every rule checked."""
    model, cluster, workload = request.specs(request.num_gpus)
    model_parallel = request.tp * request.pp * request.cp
    dp = request.dp
    if dp is None:
        if request.num_gpus % model_parallel:
            raise PlanError(f"tp*pp*cp={model_parallel} does not divide num_gpus={request.num_gpus}; "
                            f"choose degrees whose product divides the GPU count")
        dp = request.num_gpus // model_parallel
    strategy = Strategy(
        dp=dp, tp=request.tp, pp=request.pp, cp=request.cp, ep=request.ep, vpp=request.vpp,
        micro_batch=request.micro_batch, zero=request.zero, recompute=request.recompute,
        sequence_parallel=request.tp > 1 if request.sequence_parallel is None else request.sequence_parallel,
        schedule=request.schedule or ("interleaved" if request.vpp > 1 else "1f1b"),
    )
    check_strategy(strategy, model, cluster, workload)
    return model, cluster, workload, strategy


def estimate_from_cost(cost: TrainingCost, i: int, model: ModelSpec, cluster: ClusterSpec, workload: TrainWorkload,
                       table: StrategyTable) -> Estimate:
    """Row `i` of a vectorised result as an `Estimate` record."""
    return Estimate(
        model=model.name,
        gpu=cluster.gpu.name,
        num_gpus=cluster.num_gpus,
        strategy=table.row(i),
        num_microbatches=int(num_microbatches(table, workload)[i]),
        step_time_s=float(cost.step_time_s[i]),
        tokens_per_s=float(cost.tokens_per_s[i]),
        tokens_per_s_per_gpu=float(cost.tokens_per_s_per_gpu[i]),
        tflops_per_gpu=float(cost.tflops_per_gpu[i]),
        mfu=float(cost.mfu[i]),
        hfu=float(cost.hfu[i]),
        peak_memory_bytes=float(cost.peak_memory_bytes[i]),
        memory_capacity_bytes=cluster.gpu.hbm_bytes,
        fits=bool(np.asarray(cost.fits)[i]),
        breakdown={k: float(v[i]) for k, v in cost.breakdown.items()},
        memory_breakdown=cost.memory.as_dict(i),
        provenance=cost.provenance,
        formulas=BREAKDOWN_SOURCES,
    )


def estimate(request: EstimateRequest | dict[str, Any] | None = None, *, efficiency: Efficiency | None = None,
             **fields: Any) -> Estimate:
    """Price one training strategy.

    >>> e = estimate(model="Llama-3.1-8B", gpu="H100", num_gpus=8, global_batch=32, seq_len=8192, tp=2)
    >>> e.strategy.dp, e.fits
    (4, True)
    """
    if request is None or isinstance(request, dict):
        request = parse_request({**(request or {}), **fields})
    elif fields:
        raise PlanError("pass either an EstimateRequest or keyword fields, not both")
    model, cluster, workload, strategy = resolve(request)
    table = StrategyTable.from_strategies([strategy])
    cost = training_cost(model, cluster, workload, table, efficiency or request.efficiency())
    return estimate_from_cost(cost, 0, model, cluster, workload, table)
