"""`meshplan tune`: the whole loop — search, run the best-predicted candidate, re-calibrate, re-rank — until the
predicted winner is the measured winner or the run budget is spent.

Each round: rank every candidate with the current factors; if the predicted winner has been measured and no
measured strategy beats it, stop (converged); otherwise run the best-predicted strategy not yet measured,
store it, and re-fit the factors to this session's successful runs (`meshplan.measure.calibrate`). The pick is
the fastest measured strategy. A run that fails is recorded with its cause, counts against the budget, and is
not tried again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

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
         margin: float = 0.2) -> TuneResult:
    """Tune within `budget` real runs. The predicted winner counts as confirmed when it is the fastest measured
    strategy and every candidate predicted within `margin` (relative) of it has been measured too: closer than
    that, the calibrated model cannot tell them apart (its errors are of that size)."""
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
        todo = next((i for i in ranked if pool[i].strategy.label() not in done), None)
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
