"""`meshplan validate`: plan for the local devices, run the top candidates, compare predicted with measured.

The planner's own space (`meshplan.space`) over the local devices of a hardware profile, narrowed to what the
executor runs faithfully and to the axis values asked for (`LocalAxes`); every candidate is priced by the cost
model with the profile's layer of knowledge, the top K (or all) run one launch each — a launch that fails is
recorded with its cause and the others still run — and every prediction and measurement goes to the store.
"""

from __future__ import annotations

import platform
import statistics
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import Field
from scipy.stats import spearmanr

from meshplan import __version__
from meshplan.cost.efficiency import Efficiency
from meshplan.cost.training import training_cost
from meshplan.errors import PlanError
from meshplan.measure.hardware import HardwareProfile, local_cluster, profile_efficiency
from meshplan.measure.store import RunRecord, Store
from meshplan.run.config import RunConfig
from meshplan.search.base import SearchRequest
from meshplan.search.exhaustive import search_exhaustive
from meshplan.space import SpaceConstraints
from meshplan.specs import ModelSpec, TrainWorkload, load_model
from meshplan.specs.base import Frozen
from meshplan.strategy import Recompute, Schedule, Strategy, StrategyTable

# Stand-in models for local runs (Llama-style; ~0.5M and ~20M parameters). `small-20m` is large enough that
# compute dominates a step on a CPU (~2 s with 4 processes on 2 cores at global batch 4 x 128 tokens).
LOCAL_MODELS = {
    "tiny": ModelSpec(name="tiny", num_layers=4, hidden=64, ffn_hidden=128, num_heads=4, num_kv_heads=4, head_dim=16,
                      vocab=256, gated_mlp=True, tied_embeddings=False),
    "small-20m": ModelSpec(name="small-20m", num_layers=8, hidden=384, ffn_hidden=1024, num_heads=8, num_kv_heads=4,
                           head_dim=48, vocab=8192, gated_mlp=True, tied_embeddings=False),
}


def load_local_model(spec: str) -> ModelSpec:
    """`tiny`, `small-20m`, a preset or a config.json."""
    return LOCAL_MODELS.get(spec.lower()) or load_model(spec)


class LocalAxes(Frozen):
    """Which values of the axes to enumerate locally (the rest of the planner's space stays as it is)."""

    zero: tuple[int, ...] = (0, 3)
    """ZeRO stages: the executor runs ZeRO-1/2 as FSDP without resharding, which shards the weights too, so only
    0 (DDP) and 3 (FSDP) match the cost model's memory."""
    recompute: tuple[Recompute, ...] = ("none", "selective", "full")
    schedule: tuple[Schedule, ...] = ("1f1b", "gpipe")
    sequence_parallel: tuple[bool, ...] = (False, True)
    micro_batch: int = Field(default=1, gt=0)
    vpp: int = Field(default=1, gt=0)

    def describe(self) -> str:
        return (f"dp x tp x pp = processes, cp 1, ep 1, vpp {self.vpp}, micro-batch {self.micro_batch}, "
                f"zero {'/'.join(map(str, self.zero))}, recompute {'/'.join(self.recompute)}, "
                f"schedule {'/'.join(self.schedule)} (pp > 1), sequence parallel "
                f"{'/'.join('on' if s else 'off' for s in self.sequence_parallel)} (tp > 1)")


class LocalJob(Frozen):
    """What runs locally: the model, the processes, the data per step, how long."""

    model: ModelSpec
    num_processes: int = Field(gt=0)
    global_batch: int = Field(gt=0)
    seq_len: int = Field(gt=0)
    steps: int = Field(default=4, gt=0)
    """Optimizer steps per run; the first `warmup` are left out of the median."""
    warmup: int = Field(default=1, ge=0)
    timeout_s: float = Field(default=300.0, gt=0)
    axes: LocalAxes = LocalAxes()

    @property
    def workload(self) -> TrainWorkload:
        return TrainWorkload(global_batch=self.global_batch, seq_len=self.seq_len)

    def config(self, strategy: Strategy) -> RunConfig:
        return RunConfig(model=self.model, strategy=strategy, global_batch=self.global_batch, seq_len=self.seq_len,
                         steps=self.steps, warmup=self.warmup, timeout_s=self.timeout_s, check_parity=False)


@dataclass(frozen=True)
class Candidate:
    strategy: Strategy
    predicted_step_time_s: float
    predicted_peak_memory_bytes: float


def candidates(job: LocalJob, profile: HardwareProfile, efficiency: Efficiency | None = None) -> list[Candidate]:
    """Every strategy of the local space that fits and the executor runs, best predicted step time first."""
    from meshplan.run.parallel import check_runnable

    eff = efficiency or profile_efficiency(profile)
    cluster = local_cluster(profile, job.num_processes)
    constraints = SpaceConstraints(cp=1, ep=1, micro_batch=job.axes.micro_batch, vpp=job.axes.vpp)
    result = search_exhaustive(SearchRequest(model=job.model, cluster=cluster, workload=job.workload,
                                             constraints=constraints, top_k=0, efficiency=eff))
    out = []
    for i in range(len(result.ranked)):
        s = result.ranked.table.row(i)
        if (s.zero not in job.axes.zero or s.recompute not in job.axes.recompute
                or (s.pp > 1 and s.schedule not in job.axes.schedule)
                or (s.tp > 1 and s.sequence_parallel not in job.axes.sequence_parallel)):
            continue
        try:
            check_runnable(job.model, s, job.global_batch, job.seq_len)
        except PlanError:
            continue
        out.append(Candidate(s, float(result.ranked.cost.step_time_s[i]), float(result.ranked.cost.peak_memory_bytes[i])))
    if not out:
        raise PlanError(f"no strategy of {job.model.name} on {job.num_processes} processes is valid, fits and runs "
                        f"({job.axes.describe()}); change --nproc, --global-batch or --seq-len")
    return sorted(out, key=lambda c: c.predicted_step_time_s)


def predict(job: LocalJob, strategies: Sequence[Strategy], profile: HardwareProfile,
            efficiency: Efficiency) -> tuple[np.ndarray, np.ndarray]:
    """(step time s, peak memory bytes) of each strategy under `efficiency`."""
    table = StrategyTable.from_strategies(list(strategies))
    cost = training_cost(job.model, local_cluster(profile, job.num_processes), job.workload, table, efficiency)
    return cost.step_time_s, cost.peak_memory_bytes


@dataclass(frozen=True)
class Measured:
    step_time_s: float
    peak_memory_bytes: float


Runner = Callable[[RunConfig, int], Measured]
"""Runs one config on N processes and returns what it measured; raises RunFailed or PlanError when it fails."""


def torchrun_runner(cfg: RunConfig, nproc: int) -> Measured:
    """One launch; a launch lost to a rank killed by a signal (gloo's sporadic SIGABRT on a loaded machine) is
    retried once, and the second failure is the one reported."""
    from meshplan.run.launch import RunFailed, launch

    for attempt in (1, 2):
        try:
            result = launch(cfg, nproc, reference=False)
            break
        except RunFailed as exc:
            if attempt == 2 or " died (" not in str(exc):
                raise
    assert result is not None  # not joined to an outer torchrun
    return Measured(result.step_time_s, float(result.peak_memory_bytes))


def software_versions() -> dict[str, str]:
    import importlib.metadata as md

    try:
        torch_version = md.version("torch")
    except md.PackageNotFoundError:
        torch_version = "absent"
    return {"meshplan": __version__, "torch": torch_version, "python": platform.python_version()}


def run_and_store(job: LocalJob, todo: Sequence[Candidate], profile: HardwareProfile, store: Store | None,
                  session: str, layer: str, runner: Runner = torchrun_runner,
                  on_result: Callable[[RunRecord], None] | None = None) -> list[RunRecord]:
    """Run each candidate in its own launch; a failure is recorded with its cause and the others still run."""
    from meshplan.run.launch import RunFailed

    software = software_versions()
    records = []
    for c in todo:
        base = RunRecord(session=session, hardware_fingerprint=profile.fingerprint, software=software,
                         model=job.model, strategy=c.strategy, num_processes=job.num_processes,
                         global_batch=job.global_batch, seq_len=job.seq_len, steps=job.steps, knowledge_layer=layer,
                         predicted_step_time_s=c.predicted_step_time_s,
                         predicted_peak_memory_bytes=c.predicted_peak_memory_bytes, status="failed")
        try:
            m = runner(job.config(c.strategy), job.num_processes)
            record = base.model_copy(update={"status": "ok", "measured_step_time_s": m.step_time_s,
                                             "measured_peak_memory_bytes": m.peak_memory_bytes})
        except (RunFailed, PlanError) as exc:
            record = base.model_copy(update={"error": str(exc)})
        if store is not None:
            record = record.model_copy(update={"id": store.add(record)})
        records.append(record)
        if on_result is not None:
            on_result(record)
    return records


@dataclass(frozen=True)
class Summary:
    """Errors of the successful runs: relative (predicted / measured - 1)."""

    num_ok: int
    num_failed: int
    median_abs_step_error: float
    max_abs_step_error: float
    spearman: float
    """Rank correlation of predicted and measured step times (nan with fewer than 3 runs)."""
    median_abs_memory_error: float
    max_abs_memory_error: float


def step_error(r: RunRecord) -> float:
    assert r.measured_step_time_s is not None
    return r.predicted_step_time_s / r.measured_step_time_s - 1.0


def memory_error(r: RunRecord) -> float:
    assert r.measured_peak_memory_bytes is not None
    return r.predicted_peak_memory_bytes / r.measured_peak_memory_bytes - 1.0


def summarise(records: Sequence[RunRecord]) -> Summary:
    ok = [r for r in records if r.status == "ok"]
    if not ok:
        nan = float("nan")
        return Summary(0, len(records), nan, nan, nan, nan, nan)
    steps = [abs(step_error(r)) for r in ok]
    mems = [abs(memory_error(r)) for r in ok]
    rho = float(spearmanr([r.predicted_step_time_s for r in ok], [r.measured_step_time_s for r in ok])[0]) \
        if len(ok) >= 3 else float("nan")
    return Summary(len(ok), len(records) - len(ok), statistics.median(steps), max(steps), rho,
                   statistics.median(mems), max(mems))


def validate(job: LocalJob, profile: HardwareProfile, *, top_k: int | None, store: Store | None,
             runner: Runner = torchrun_runner, on_result: Callable[[RunRecord], None] | None = None,
             efficiency: Efficiency | None = None) -> tuple[list[RunRecord], Summary]:
    """Run the top `top_k` candidates (all with None), store and summarise them."""
    eff = efficiency or profile_efficiency(profile)
    todo = candidates(job, profile, eff)
    if top_k is not None:
        todo = todo[:top_k]
    layer = eff.layer + (" (calibrated)" if profile.efficiency is not None and efficiency is None else "")
    records = run_and_store(job, todo, profile, store, uuid.uuid4().hex[:12], layer, runner, on_result)
    return records, summarise(records)
