"""`meshplan tune`: the whole loop — search, run the best-predicted candidate, re-calibrate, re-rank — until the
predicted winner is the measured winner or the run budget is spent.

Each round: rank every candidate with the current factors; if the predicted winner has been measured and no
measured strategy beats it, stop (converged); otherwise run the best-predicted strategy not yet measured,
store it, and re-fit the factors to this session's successful runs (`meshplan.measure.calibrate`). The pick is
the fastest measured strategy. A run that fails is recorded with its cause, counts against the budget, and is
not tried again.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from meshplan.cost.efficiency import Efficiency
from meshplan.errors import PlanError
from meshplan.measure.calibrate import calibrate
from meshplan.measure.hardware import HardwareProfile, profile_efficiency
from meshplan.measure.store import RunRecord, Store
from meshplan.measure.validate import Candidate, LocalJob, Runner, candidates, predict, run_and_store, torchrun_runner


@dataclass(frozen=True)
class TuneResult:
    pick: RunRecord | None
    """The fastest measured strategy (None when every run failed)."""
    records: list[RunRecord]
    """Every run, in order."""
    converged: bool
    """True when the predicted winner was the measured winner before the budget ran out."""
    efficiency: Efficiency
    """The factors after the last re-calibration."""
    rounds: list[str] = field(default_factory=list)
    """One line per round: what was predicted best, what ran."""


def tune(job: LocalJob, profile: HardwareProfile, *, budget: int, store: Store | None,
         runner: Runner = torchrun_runner, on_round: Callable[[str], None] | None = None,
         margin: float = 0.2, explore: float = 1.0) -> TuneResult:
    """Tune within `budget` real runs. The predicted winner counts as confirmed when it is the fastest measured
    strategy and every candidate predicted within `margin` (relative) of it has been measured too: closer than
    that, the calibrated model cannot tell them apart (its errors are of that size). Which one runs next: among the
    unmeasured candidates predicted within `explore` / √(runs + 1) of the winner, one of the layout (dp, tp, pp)
    measured least so far, the best predicted first — early runs spread over layouts, since a model fitted to one
    layout extrapolates poorly to the others."""
    if budget < 1:
        raise PlanError(f"--budget {budget} must allow at least one run")
    eff = profile_efficiency(profile)
    pool = candidates(job, profile, eff)
    current = profile  # re-calibration refits the link latency too
    session = uuid.uuid4().hex[:12]
    done: dict[str, RunRecord] = {}
    records: list[RunRecord] = []
    rounds: list[str] = []
    converged = False
    while True:
        step, mem = predict(job, [c.strategy for c in pool], current, eff)
        ranked = sorted(range(len(pool)), key=lambda i: float(step[i]))
        winner = pool[ranked[0]].strategy.label()
        ok = [r for r in done.values() if r.status == "ok"]
        measured_best = min(ok, key=lambda r: r.measured_step_time_s or 0.0) if ok else None
        contenders = [pool[i].strategy.label() for i in ranked if step[i] <= (1.0 + margin) * step[ranked[0]]]
        if measured_best is not None and measured_best.strategy.label() == winner \
                and all(label in done for label in contenders):
            converged = True
            rounds.append(f"predicted winner {winner} is the measured winner: stop")
            break
        if len(records) >= budget:
            rounds.append(f"budget of {budget} runs spent")
            break
        todo = _next_run(pool, ranked, step, done, explore)
        if todo is None:
            rounds.append("every candidate measured")
            break
        c = pool[todo]
        predicted = Candidate(c.strategy, float(step[todo]), float(mem[todo]))
        layer = eff.layer + (" (calibrated)" if records else "")
        record = run_and_store(job, [predicted], profile, store, session, layer, runner)[0]
        records.append(record)
        done[c.strategy.label()] = record
        line = (f"run {len(records)}: {c.strategy.label()} predicted {predicted.predicted_step_time_s:.3f} s, "
                + (f"measured {record.measured_step_time_s:.3f} s" if record.status == "ok" else f"failed: {record.error}"))
        rounds.append(line)
        if on_round is not None:
            on_round(line)
        if any(r.status == "ok" for r in records):
            fit = calibrate(records, profile)
            current, eff = fit.profile, fit.efficiency
    ok = [r for r in records if r.status == "ok"]
    pick = min(ok, key=lambda r: r.measured_step_time_s or 0.0) if ok else None
    return TuneResult(pick, records, converged, eff, rounds)


def _next_run(pool: list[Candidate], ranked: list[int], step: np.ndarray, done: dict[str, RunRecord],
              explore: float) -> int | None:
    """Index of the next candidate to run (None when every one has been measured)."""
    left = [i for i in ranked if pool[i].strategy.label() not in done]
    if not left:
        return None
    width = explore / math.sqrt(len(done) + 1)
    near = [i for i in left if step[i] <= (1.0 + width) * step[ranked[0]]] or left[:1]
    runs_per_layout: dict[tuple[int, int, int], int] = {}
    for r in done.values():
        key = (r.strategy.dp, r.strategy.tp, r.strategy.pp)
        runs_per_layout[key] = runs_per_layout.get(key, 0) + 1

    def layout_runs(i: int) -> int:
        s = pool[i].strategy
        return runs_per_layout.get((s.dp, s.tp, s.pp), 0)

    return min(near, key=lambda i: (layout_runs(i), float(step[i])))
