"""Start a run: under an existing `torchrun` join it; otherwise start `torchrun` with one process per rank.

Every failure ends with one message naming the rank and the cause (a rank that raised, a rank that hung past
the timeout, a plan the executor cannot take, too many processes), all processes of the launch killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field

from meshplan.errors import PlanError
from meshplan.run.config import RunConfig
from meshplan.specs.base import Frozen

MAX_LOCAL_PROCESSES = 64  # a single machine launch beyond this is almost surely a mistake
GRACE_S = 20.0  # seconds beyond the collective timeout before the launcher kills the whole launch


class RunFailed(RuntimeError):
    """A launch that did not complete; the message names the rank and the cause."""


class RankResult(Frozen):
    rank: int
    coords: dict[str, int]
    step_times_s: list[float]
    median_step_time_s: float
    losses: list[float]
    grad_norms: list[float]
    memory: dict[str, Any] = {}


class RunResult(Frozen):
    """What a run measured, and how it compares with a single process."""

    config: RunConfig
    backend: str
    world_size: int
    torch: str
    ranks: list[RankResult]
    step_time_s: float = Field(description="median step time after warm-up, slowest rank")
    tokens_per_s: float
    losses: list[float]
    grad_norms: list[float]
    reference_losses: list[float] | None = None
    reference_grad_norms: list[float] | None = None
    max_loss_rel_diff: float | None = None
    """Largest |loss - reference| / |reference| over the steps."""
    max_grad_norm_rel_diff: float | None = None

    @property
    def peak_memory_bytes(self) -> int:
        return max(int(r.memory.get("peak_bytes", 0)) for r in self.ranks)


def _rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def _summarise(cfg: RunConfig, payload: dict[str, Any], reference: tuple[list[float], list[float]] | None) -> RunResult:
    ranks = [RankResult(**r) for r in sorted(payload["ranks"], key=lambda r: r["rank"])]
    step = max(r.median_step_time_s for r in ranks)
    losses, norms = ranks[0].losses, ranks[0].grad_norms
    ref_losses, ref_norms = reference if reference is not None else (None, None)
    return RunResult(config=cfg, backend=payload["backend"], world_size=payload["world_size"], torch=payload["torch"],
                     ranks=ranks, step_time_s=step, tokens_per_s=cfg.global_batch * cfg.seq_len / step, losses=losses,
                     grad_norms=norms, reference_losses=ref_losses, reference_grad_norms=ref_norms,
                     max_loss_rel_diff=_rel(losses, ref_losses) if ref_losses else None,
                     max_grad_norm_rel_diff=_rel(norms, ref_norms) if ref_norms and norms else None)


def _root_cause(stderr: str) -> str | None:
    """torchrun's own 'Root Cause' block: a rank killed by a signal leaves no error file of ours."""
    import re

    block = stderr.split("Root Cause", 1)
    if len(block) < 2:
        return None
    rank = re.search(r"rank\s*:\s*(\d+)", block[1])
    code = re.search(r"exitcode\s*:\s*(-?\d+)", block[1])
    if not rank or not code or int(code.group(1)) >= 0:
        return None
    what = re.search(r"what\(\):\s*(.+)", stderr)
    sig = signal.Signals(-int(code.group(1))).name if -int(code.group(1)) in signal.valid_signals() else code.group(1)
    if what:
        detail = what.group(1).strip()
    else:  # the last lines the ranks printed before torchrun's own report
        lines = [line for line in stderr.split("Root Cause", 1)[0].splitlines() if line.strip() and "*****" not in line]
        detail = " | ".join(lines[-3:])
    return f"rank {rank.group(1)} died ({sig})" + (f": {detail}" if detail else "")


def _failure(out: Path, world: int, returncode: int | None, stderr: str) -> str:
    died = _root_cause(stderr)
    if died is not None:
        return died
    # The earliest error is the cause; the others are ranks that lost a peer or timed out waiting for it.
    errors = sorted(out.glob("rank*.error"), key=lambda p: float(p.read_text().split("\n", 1)[0]))
    if errors:
        first = errors[0]
        cause = first.read_text().splitlines()[1]
        others = f" (also ranks {', '.join(p.stem[4:] for p in errors[1:])})" if len(errors) > 1 else ""
        return f"rank {first.stem[4:]} failed: {cause}{others}"
    tail = " | ".join(stderr.strip().splitlines()[-3:]) if stderr.strip() else "no output"
    return f"the launch exited with status {returncode} before any rank reported an error: {tail}"


def _stuck_ranks(out: Path, world: int) -> str:
    states = {}
    for r in range(world):
        p = out / f"rank{r}.progress"
        states[r] = p.read_text() if p.exists() else "not started"
    behind = [r for r, s in states.items() if s != "done"]
    return ", ".join(f"rank {r} at {states[r]}" for r in behind) or "none"


def launch(cfg: RunConfig, nproc: int, *, reference: bool = True, timeout_s: float | None = None) -> RunResult | None:
    """Run `cfg` on `nproc` processes and collect the result (rank 0's view of all ranks). Joined to an outer
    torchrun, every rank runs and only rank 0 returns a result (the others None)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # joined: an outer torchrun started us
        _check(cfg, nproc, joined=True)
        if int(os.environ["WORLD_SIZE"]) != nproc:
            raise PlanError(f"the strategy needs {nproc} processes, the outer torchrun has WORLD_SIZE="
                            f"{os.environ['WORLD_SIZE']}; launch with --nproc-per-node x --nnodes = {nproc}")
        return _joined(cfg, _reference(cfg) if reference else None)
    return launch_many([cfg], nproc, reference=reference, timeout_s=timeout_s)[0]


def _check(cfg: RunConfig, nproc: int, joined: bool = False) -> None:
    from meshplan.run import require_torch
    from meshplan.run.parallel import check_runnable

    require_torch()
    s = cfg.strategy
    if s.num_gpus != nproc:
        raise PlanError(f"the strategy needs dp*tp*pp*cp={s.num_gpus} processes, --nproc is {nproc}; "
                        "make them equal (or let meshplan run rescale dp)")
    if nproc > MAX_LOCAL_PROCESSES and not joined:
        raise PlanError(f"--nproc {nproc} exceeds {MAX_LOCAL_PROCESSES} processes on one machine; "
                        "launch it across nodes with torchrun, or use fewer ranks")
    check_runnable(cfg.model, s, cfg.global_batch, cfg.seq_len, cfg.stage_layers, cfg.layer_recompute)


def _reference(cfg: RunConfig) -> tuple[list[float], list[float]]:
    from meshplan.run.worker import reference_run

    return reference_run(cfg)


def launch_many(configs: list[RunConfig], nproc: int, *, reference: bool = True,
                timeout_s: float | None = None) -> list[RunResult]:
    """Run several configs of the same process count one after another in one torchrun launch (one start-up
    instead of many); a failure of any stops the launch and is reported with its config. With the environment
    variable MESHPLAN_RUN_STDERR set to a path, a failed launch's whole stderr is kept there."""
    for cfg in configs:
        _check(cfg, nproc)
    refs = [_reference(cfg) if reference else None for cfg in configs]
    with tempfile.TemporaryDirectory(prefix="meshplan-run-") as tmp:
        out = Path(tmp)
        config_path = out / "config.json"
        config_path.write_text(json.dumps([c.model_dump(mode="json") for c in configs]))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
               f"--nproc-per-node={nproc}", "-m", "meshplan.run.worker", str(config_path), str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env=env)
        limit = timeout_s if timeout_s is not None else sum(c.timeout_s + GRACE_S + 30.0 * c.steps for c in configs)
        try:
            _, stderr = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise RunFailed(f"the run did not finish within {limit:.0f} s and was killed; stuck: "
                            f"{_stuck_ranks(out, nproc)}") from None
        finally:
            kill_group(proc)
        done = [out / f"result-{i}.json" for i in range(len(configs))]
        if proc.returncode != 0 or not all(p.exists() for p in done):
            if os.environ.get("MESHPLAN_RUN_STDERR"):  # keep the launch's whole stderr for a post-mortem
                Path(os.environ["MESHPLAN_RUN_STDERR"]).write_text(stderr)
            failed_at = next(i for i, p in enumerate(done + [None]) if p is None or not p.exists())
            which = f" (config {failed_at + 1} of {len(configs)}: {configs[failed_at].strategy.label()})" \
                if len(configs) > 1 and failed_at < len(configs) else ""
            raise RunFailed(_failure(out, nproc, proc.returncode, stderr) + which)
        return [_summarise(cfg, json.loads(p.read_text()), ref) for cfg, p, ref in zip(configs, done, refs)]


def kill_group(proc: subprocess.Popen[str]) -> None:
    """Terminate the launch's whole process group (torchrun and every rank), then make sure."""
    if proc.poll() is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of a finished group
        except (ProcessLookupError, PermissionError):
            pass
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _joined(cfg: RunConfig, ref: tuple[list[float], list[float]] | None) -> RunResult | None:
    """Inside an existing torchrun job (multi-node): every rank runs; rank 0 returns the result."""
    from meshplan.run.worker import main

    out = Path(os.environ.get("MESHPLAN_RUN_DIR", tempfile.mkdtemp(prefix="meshplan-run-")))
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    if int(os.environ["RANK"]) == 0:
        config_path.write_text(cfg.model_dump_json())
    else:
        config_path = out / f"config-{os.environ['RANK']}.json"
        config_path.write_text(cfg.model_dump_json())
    if main([str(config_path), str(out)]) != 0:
        raise RunFailed(_failure(out, int(os.environ["WORLD_SIZE"]), 1, ""))
    if int(os.environ["RANK"]) != 0:  # rank 0 reports the run
        return None
    return _summarise(cfg, json.loads((out / "result-0.json").read_text()), ref)
