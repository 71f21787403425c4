"""`meshplan profile | validate | calibrate | tune`: measure the local devices, check predictions, learn from runs."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from meshplan.cli.main import Opt, _fail
from meshplan.errors import PlanError, first_error

HardwareReq = Annotated[Path | None, Opt(help="Hardware profile written by `meshplan profile --out`.")]
DbOpt = Annotated[Path | None, Opt(help="Measurement store (default: $XDG_DATA_HOME/meshplan/measurements.db).")]
NprocOpt = Annotated[int, Opt(help="Processes (devices) to run on.")]
ModelReq = Annotated[str | None, Opt(help="tiny, small-20m, a preset or a config.json.")]
GlobalBatchOpt = Annotated[int, Opt(help="Sequences per optimizer step.")]
SeqLenOpt = Annotated[int, Opt(help="Tokens per sequence.")]
StepsOpt = Annotated[int, Opt(help="Optimizer steps per run (the first is warm-up, left out of the median).")]
ZeroOpt = Annotated[str, Opt(help="ZeRO stages to enumerate (the executor's ZeRO-1/2 shard weights too).")]
RecomputeOpt = Annotated[str, Opt(help="Recomputation modes to enumerate.")]
ScheduleOpt = Annotated[str, Opt(help="Pipeline schedules to enumerate.")]
SpOpt = Annotated[str, Opt(help="Sequence parallelism under tp > 1: on, off or on,off.")]
TimeoutOpt = Annotated[float, Opt(help="Seconds a collective may wait before a run fails.")]


def _err() -> Console:
    return Console(stderr=True)


def _console() -> Console:
    return Console() if os.isatty(1) else Console(width=140)


def profile_cmd(
    nproc: NprocOpt = 1,
    out: Annotated[Path, Opt(help="Where to write the profile (JSON, written atomically).")] = Path("hw.json"),
    quick: Annotated[bool, Opt("--quick", help="Fewer, shorter microbenchmarks (seconds; for tests).")] = False,
) -> None:
    """Measure GEMM throughput, memory bandwidth and collectives on N local processes; write a hardware profile."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from meshplan.measure.hardware import write_profile
    from meshplan.measure.profile import ProfileFailed, measure

    try:
        with Progress(TextColumn("profiling"), BarColumn(), TextColumn("{task.completed}/{task.total} items"),
                      TimeElapsedColumn(), console=_err(), transient=True) as bar:
            task = bar.add_task("profile", total=None)
            profile = measure(nproc, quick=quick, progress=lambda done, total: bar.update(task, completed=done, total=total))
        write_profile(profile, out)
    except PlanError as exc:
        _fail(str(exc))
        return
    except ProfileFailed as exc:
        _err().print(f"[red]profile failed:[/red] {escape(str(exc))}; nothing was written", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        _err().print("interrupted: every process of the profile was stopped; nothing was written", highlight=False)
        raise typer.Exit(130) from None
    _console().print(profile_table(profile))
    _err().print(f"wrote {escape(str(out))}", highlight=False)


def profile_table(profile: Any) -> Table:
    d = profile.device
    t = Table(title=f"hardware profile {profile.fingerprint}: {d.num_processes} x {d.name} ({d.backend}, "
                    f"torch {d.torch_version})", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for dtype, c in profile.flops.items():
        t.add_row(f"GEMM {dtype}", f"{c.peak_flops_per_s / 1e9:,.1f} GFLOP/s per process at large intensity, half at "
                                   f"{c.half_intensity:.1f} FLOP/B (curve error {c.rms_relative_error:.0%} rms)")
    t.add_row("memory bandwidth", f"{profile.memory_bytes_per_s / 1e9:,.2f} GB/s per process (copy, all at once)")
    link = profile.links["intra_node"]
    kinds = sorted({p.collective for p in profile.collectives})
    t.add_row("links (α-β)", f"α {link.latency_s * 1e6:,.1f} µs, β⁻¹ {link.bytes_per_s / 1e9:,.3f} GB/s, fitted to "
                             f"{link.num_points} timings of {', '.join(kinds) or 'none'} (error {link.rms_relative_error:.0%} rms)")
    t.add_row("memory per process", f"{d.memory_bytes_per_process / 1e9:,.1f} GB")
    if profile.calibration:
        fitted = ", ".join(f"{k} {v['value']:.3g} ± {v['stderr']:.2g}" for k, v in profile.calibration["fitted"].items())
        t.add_row("calibrated", f"{profile.calibration['runs']} runs: {fitted}")
    return t


def _job(model: str | None, nproc: int, global_batch: int, seq_len: int, steps: int, zero: str, recompute: str,
         schedule: str, sequence_parallel: str, timeout: float) -> Any:
    from pydantic import ValidationError

    from meshplan.measure.validate import LocalAxes, LocalJob, load_local_model

    if model is None:
        raise PlanError("missing --model; use tiny, small-20m, a preset or a config.json")

    def split(text: str, flag: str) -> list[str]:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise PlanError(f"{flag} {text!r} is empty; give one or more values separated by commas")
        return parts

    try:
        zeros = []
        for z in split(zero, "--zero"):
            if not z.isdigit():
                raise PlanError(f"--zero {zero!r}: {z!r} is not a ZeRO stage; write e.g. 0,3")
            zeros.append(int(z))
        sp_values = {"on": True, "off": False}
        sp = []
        for v in split(sequence_parallel, "--sequence-parallel"):
            if v not in sp_values:
                raise PlanError(f"--sequence-parallel {sequence_parallel!r}: {v!r} is not on or off")
            sp.append(sp_values[v])
        axes = LocalAxes(zero=tuple(zeros), recompute=tuple(split(recompute, "--recompute")),  # type: ignore[arg-type]
                         schedule=tuple(split(schedule, "--schedule")), sequence_parallel=tuple(sp))  # type: ignore[arg-type]
        return LocalJob(model=load_local_model(model), num_processes=nproc, global_batch=global_batch, seq_len=seq_len,
                        steps=steps, timeout_s=timeout, axes=axes)
    except ValidationError as exc:
        where, msg, value = first_error(exc)
        raise PlanError(f"{where}={value!r}: {msg}; fix that value") from None


def _profile(hardware: Path | None) -> Any:
    from meshplan.measure.hardware import load_profile

    if hardware is None:
        raise PlanError("missing --hardware; measure the devices first: meshplan profile --nproc N --out hw.json")
    return load_profile(hardware)


def _store(db: Path | None) -> Any:
    from meshplan.measure.store import Store

    return Store(db)


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:+.1%}"


def runs_table(records: list[Any], title: str) -> Table:
    from meshplan.measure.validate import memory_error, step_error

    t = Table(title=title, title_justify="left")
    for col in ("strategy", "pred s", "meas s", "err", "pred MB", "meas MB", "err"):
        t.add_column(col, justify="left" if col == "strategy" else "right")
    for r in records:
        if r.status == "ok":
            t.add_row(r.strategy.label(), f"{r.predicted_step_time_s:.3f}", f"{r.measured_step_time_s:.3f}",
                      _pct(step_error(r)), f"{r.predicted_peak_memory_bytes / 1e6:,.1f}",
                      f"{r.measured_peak_memory_bytes / 1e6:,.1f}", _pct(memory_error(r)))
        else:
            t.add_row(r.strategy.label(), f"{r.predicted_step_time_s:.3f}", "[red]failed[/red]", "", 
                      f"{r.predicted_peak_memory_bytes / 1e6:,.1f}", "", "")
    return t


def summary_line(s: Any) -> str:
    return (f"{s.num_ok} measured, {s.num_failed} failed; step time |error| median {s.median_abs_step_error:.1%}, "
            f"max {s.max_abs_step_error:.1%}; Spearman {s.spearman:.2f}; peak memory |error| median "
            f"{s.median_abs_memory_error:.1%}, max {s.max_abs_memory_error:.1%}")


def validate_cmd(
    model: ModelReq = None,
    nproc: NprocOpt = 4,
    top_k: Annotated[int, Opt(help="Run the K best-predicted strategies.")] = 3,
    run_all: Annotated[bool, Opt("--all", help="Run every valid strategy.")] = False,
    hardware: HardwareReq = None,
    db: DbOpt = None,
    global_batch: GlobalBatchOpt = 4,
    seq_len: SeqLenOpt = 128,
    steps: StepsOpt = 4,
    zero: ZeroOpt = "0,3",
    recompute: RecomputeOpt = "none,selective,full",
    schedule: ScheduleOpt = "1f1b,gpipe",
    sequence_parallel: SpOpt = "on,off",
    timeout: TimeoutOpt = 300.0,
) -> None:
    """Plan for the local devices, run the top K (or all), print predicted vs measured and store everything."""
    from meshplan.measure.validate import summarise, validate

    try:
        if top_k < 1:
            raise PlanError(f"--top-k {top_k} must be at least 1")
        job = _job(model, nproc, global_batch, seq_len, steps, zero, recompute, schedule, sequence_parallel, timeout)
        profile = _profile(hardware)
        store = _store(db)
    except PlanError as exc:
        _fail(str(exc))
        return
    err = _err()
    err.print(f"enumerated: {escape(job.axes.describe())}", highlight=False)

    def show(r: Any) -> None:
        what = f"{r.measured_step_time_s:.3f} s, {r.measured_peak_memory_bytes / 1e6:,.1f} MB" if r.status == "ok" \
            else f"[red]failed[/red]: {escape(r.error or '')}"
        err.print(f"ran {escape(r.strategy.label())}: {what}", highlight=False, soft_wrap=True)

    try:
        with store:
            records, summary = validate(job, profile, top_k=None if run_all else top_k, store=store, on_result=show)
    except PlanError as exc:
        _fail(str(exc))
        return
    console = _console()
    console.print(runs_table(records, f"{job.model.name} on {nproc} processes, batch {global_batch} x {seq_len}: "
                                      f"predicted ({records[0].knowledge_layer}) vs measured"))
    console.print(summary_line(summarise(records)), highlight=False)
    for r in records:
        if r.status == "failed":
            console.print(f"failed: {escape(r.strategy.label())}: {escape(r.error or '')}", highlight=False, soft_wrap=True)
    console.print(f"stored {len(records)} runs in {escape(str(store.path))}", highlight=False)
    if summary.num_ok == 0:
        raise typer.Exit(1)


def calibrate_cmd(
    hardware: HardwareReq = None,
    db: DbOpt = None,
    model: Annotated[str | None, Opt(help="Use only the runs of this model (default: all runs of this hardware).")] = None,
    out: Annotated[Path | None, Opt(help="Where to write the calibrated profile (default: HARDWARE with "
                                            ".calibrated.json); with --published and no --hardware, the fitted "
                                            "factors (JSON, as meshplan/data/efficiency/training.json).")] = None,
    published: Annotated[bool, Opt("--published", help="Also fit the datasheet layer's factors to the published "
                                                       "training runs shipped with meshplan.")] = False,
) -> None:
    """Fit the cost model's factors to the stored runs of this hardware (and/or the published runs); write the result."""
    from meshplan.measure.calibrate import calibrate, calibrate_published, with_published
    from meshplan.measure.hardware import write_atomic, write_profile

    console = _console()
    if published:
        fit = calibrate_published()
        _published_table(console, fit)
        if hardware is None:
            if out is not None:
                try:
                    write_atomic(fit.efficiency.model_dump_json(indent=2) + "\n", out)
                except OSError as exc:
                    _fail(f"cannot write {out}: {exc.strerror}; choose another --out")
                    return
                _err().print(f"wrote {escape(str(out))}", highlight=False)
            return
    try:
        profile = _profile(hardware)
        if db is not None and not db.exists():  # reading must not leave an empty store behind
            raise PlanError(f"measurement store {str(db)!r} does not exist; record runs into it with "
                            "`meshplan validate --db FILE` first, or pass the --db it wrote")
        from meshplan.cli.main import _check_out

        _check_out(out)
        with _store(db) as store:
            runs = store.records(hardware_fingerprint=profile.fingerprint, status="ok",
                                 model_name=load_name(model) if model else None)
        result = calibrate(runs, profile)
        assert hardware is not None
        target = out or hardware.with_name(hardware.name.removesuffix(".json") + ".calibrated.json")
        write_profile(with_published(result.profile, fit) if published else result.profile, target)
    except PlanError as exc:
        _fail(str(exc))
        return
    t = Table(title=f"fitted to {result.num_runs} runs of hardware {profile.fingerprint}", title_justify="left")
    for col in ("factor", "value", "± 1 s.e."):
        t.add_column(col, justify="left" if col == "factor" else "right")
    for f in result.fitted:
        t.add_row(f.name, f"{f.value:.4g}", f"{f.stderr:.2g}")
    console.print(t)
    console.print(f"step time |error|: before {_stats(result.step_error_before)}; after {_stats(result.step_error_after)}",
                  highlight=False)
    console.print(f"peak memory |error|: before {_stats(result.memory_error_before)}; after "
                  f"{_stats(result.memory_error_after)}", highlight=False)
    _err().print(f"wrote {escape(str(target))}", highlight=False)


def _stats(e: Any) -> str:
    import numpy as np

    return f"median {float(np.median(np.abs(e))):.1%}, max {float(np.max(np.abs(e))):.1%}"


def _published_table(console: Console, fit: Any) -> None:
    t = Table(title=f"fitted to {len(fit.error_after)} published training runs (datasheet layer)", title_justify="left")
    for col in ("factor", "value", "± 1 s.e."):
        t.add_column(col, justify="left" if col == "factor" else "right")
    for name, value, err in zip(fit.names, fit.values, fit.stderr):
        t.add_row(name, f"{value:.4g}", f"{err:.2g}")
    console.print(t)
    console.print(f"tokens/s per GPU |error|: before {_stats(fit.error_before)}; after {_stats(fit.error_after)}",
                  highlight=False)


def load_name(model: str) -> str:
    from meshplan.measure.validate import load_local_model

    return load_local_model(model).name


def tune_cmd(
    model: ModelReq = None,
    nproc: NprocOpt = 4,
    budget: Annotated[int, Opt(help="Most real runs.")] = 5,
    hardware: HardwareReq = None,
    db: DbOpt = None,
    global_batch: GlobalBatchOpt = 4,
    seq_len: SeqLenOpt = 128,
    steps: StepsOpt = 4,
    zero: ZeroOpt = "0,3",
    recompute: RecomputeOpt = "none,selective,full",
    schedule: ScheduleOpt = "1f1b,gpipe",
    sequence_parallel: SpOpt = "on,off",
    timeout: TimeoutOpt = 300.0,
) -> None:
    """Search, run the best-predicted, re-calibrate, re-rank; stop when prediction and measurement agree."""
    from meshplan.measure.tune import tune

    try:
        job = _job(model, nproc, global_batch, seq_len, steps, zero, recompute, schedule, sequence_parallel, timeout)
        profile = _profile(hardware)
        store = _store(db)
    except PlanError as exc:
        _fail(str(exc))
        return
    err = _err()
    err.print(f"enumerated: {escape(job.axes.describe())}", highlight=False)
    try:
        with store:
            result = tune(job, profile, budget=budget, store=store,
                          on_round=lambda line: err.print(escape(line), highlight=False, soft_wrap=True))
    except PlanError as exc:
        _fail(str(exc))
        return
    console = _console()
    console.print(runs_table(result.records, f"tune: {job.model.name} on {nproc} processes"))
    console.print(escape(result.rounds[-1]), highlight=False)
    if result.pick is None:
        console.print(f"[red]every one of {len(result.records)} runs failed[/red]", highlight=False)
        raise typer.Exit(1)
    console.print(f"pick: {escape(result.pick.strategy.label())}, measured {result.pick.measured_step_time_s:.3f} s "
                  f"per step, after {len(result.records)} real runs ({'converged' if result.converged else 'not converged'})",
                  highlight=False)


def register(app: typer.Typer) -> None:
    app.command("profile")(profile_cmd)
    app.command("validate")(validate_cmd)
    app.command("calibrate")(calibrate_cmd)
    app.command("tune")(tune_cmd)
