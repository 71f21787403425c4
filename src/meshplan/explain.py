"""Why the winner wins: term-by-term comparisons with the runners-up and with its one-axis neighbours."""

from __future__ import annotations

from meshplan.cost.training import training_cost
from meshplan.errors import PlanError
from meshplan.search.base import SearchResult
from meshplan.strategy import Strategy, StrategyTable, check_strategy

GB = 1e9


def _terms(delta: dict[str, float], step: float, top: int = 3) -> str:
    parts = sorted(delta.items(), key=lambda kv: -abs(kv[1]))[:top]
    return ", ".join(f"{k} {v:+.2f} s" for k, v in parts if abs(v) > 0.001 * step) or "equal terms"


def compare_runners_up(result: SearchResult, count: int = 3) -> list[str]:
    """One line per distinct runner-up: how much slower (or bigger) it is and which terms make the difference.
    Runners-up with exactly the winner's figures are listed together as equivalent."""
    r = result.ranked
    lines: list[str] = []
    step0 = float(r.cost.step_time_s[0])
    mem0 = float(r.cost.peak_memory_bytes[0])
    same: list[str] = []
    for j in range(1, len(r)):
        if len(lines) >= count:
            break
        step, mem = float(r.cost.step_time_s[j]), float(r.cost.peak_memory_bytes[j])
        if abs(step / step0 - 1) < 1e-9 and abs(mem / mem0 - 1) < 1e-9:
            same.append(f"#{j + 1} {r.table.row(j).label()}")
            continue
        delta = {k: float(v[j] - v[0]) for k, v in r.cost.breakdown.items()}
        lines.append(f"#{j + 1} {r.table.row(j).label()}: step time {step / step0 - 1:+.1%} ({_terms(delta, step0)}); "
                     f"memory {(mem - mem0) / GB:+.1f} GB")
    if same:
        lines.insert(0, "same figures as the winner: " + "; ".join(same))
    return lines


def _neighbours(s: Strategy, num_gpus: int) -> list[tuple[str, Strategy]]:
    out: list[tuple[str, Strategy]] = []

    def add(label: str, **change: object) -> None:
        fields = {**s.model_dump(), **change}
        mp = int(fields["tp"]) * int(fields["pp"]) * int(fields["cp"])  # type: ignore[call-overload]
        if mp <= 0 or num_gpus % mp:
            return
        fields["dp"] = num_gpus // mp
        if int(fields["vpp"]) > 1:  # type: ignore[call-overload]
            fields["schedule"] = "interleaved"
        elif fields["schedule"] == "interleaved":
            fields["schedule"] = "1f1b"
        try:
            out.append((label, Strategy(**fields)))  # type: ignore[arg-type]
        except ValueError:
            return

    for rc in ("none", "selective", "full"):
        if rc != s.recompute:
            add(f"recompute {rc}", recompute=rc)
    for name in ("micro_batch", "tp", "pp", "cp", "vpp"):
        if name == "vpp" and s.pp == 1:
            continue  # interleaving needs stages
        value = getattr(s, name)
        add(f"{name} {value * 2}", **{name: value * 2})
        if value > 1:
            add(f"{name} {value // 2}", **{name: value // 2})
    for z in (s.zero - 1, s.zero + 1):
        if 0 <= z <= 3:
            add(f"zero {z}", zero=z)
    if s.tp > 1:
        add(f"sequence parallel {'off' if s.sequence_parallel else 'on'}", sequence_parallel=not s.sequence_parallel)
    return out


def explain_neighbours(result: SearchResult) -> list[str]:
    """For each one-axis change of the winner: invalid (why), over memory (by how much), or slower (where)."""
    req = result.request
    if len(result.ranked) == 0:
        return []
    winner = result.ranked.table.row(0)
    step0 = float(result.ranked.cost.step_time_s[0])
    base = {k: float(v[0]) for k, v in result.ranked.cost.breakdown.items()}
    lines = []
    for label, alt in _neighbours(winner, req.cluster.num_gpus):
        try:
            check_strategy(alt, req.model, req.cluster, req.workload)
        except PlanError as exc:
            reason = str(exc).split(": ", 1)[1].split(";")[0]
            lines.append(f"{label}: invalid — {reason}")
            continue
        cost = training_cost(req.model, req.cluster, req.workload, StrategyTable.from_strategies([alt]), req.efficiency)
        peak = float(cost.peak_memory_bytes[0])
        if peak > req.usable_bytes:
            lines.append(f"{label}: does not fit — {peak / GB:.1f} GB > {req.usable_bytes / GB:.1f} GB usable "
                         f"(activations {cost.memory.activations[0] / GB:.1f} GB)")
            continue
        delta = {k: float(v[0]) - base[k] for k, v in cost.breakdown.items()}
        change = float(cost.step_time_s[0]) / step0 - 1
        lines.append(f"{label}: step time {change:+.1%} ({_terms(delta, step0)})")
    return lines
