"""`meshplan plan --search dp|genetic|policy-gradient|all`: non-uniform plans (and heterogeneous clusters)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from meshplan.cli.render import GB, print_tables
from meshplan.errors import PlanError
from meshplan.planning import PlanRequest, search_requests
from meshplan.search.nonuniform import NonUniformPlan, runs_label
from meshplan.search.nonuniform_search import ALGORITHMS

SEARCHES = ("exhaustive", *ALGORITHMS, "all")


def _row(plan: NonUniformPlan, uniform: NonUniformPlan | None) -> dict[str, Any]:
    return {
        "strategy": plan.strategy.label(), "layers_per_stage": list(plan.layers_per_stage),
        "recompute": plan.recompute_names(), "recompute_counts": plan.recompute_label(), "tokens_per_s": plan.tokens_per_s, "step_time_s": plan.step_time_s,
        "peak_memory_bytes": plan.peak_bytes, "slowest_stage": plan.bottleneck_stage,
        "gain_over_uniform": plan.tokens_per_s / uniform.tokens_per_s - 1.0 if uniform is not None else None,
    }


def plan_nonuniform(request: PlanRequest, search: str, out: Path | None, as_json: bool,
                    cross_group_gbps: float | None = None) -> None:
    """Search non-uniform plans with one algorithm (or all), print them against the best uniform plan."""
    if search not in SEARCHES:
        raise PlanError(f"--search {search!r} is not one of {', '.join(SEARCHES)}")
    if len(request.num_gpus) != 1:
        raise PlanError("--search dp/genetic/policy-gradient plans one cluster size; pass one --num-gpus")
    if request.objective != "throughput":
        raise PlanError(f"--search {search} maximises throughput; drop --objective {request.objective}")
    algorithms = list(ALGORITHMS) if search == "all" else [search]
    hetero = request.gpu is not None and ":" in request.gpu  # a --hardware profile describes one device type
    rows: list[dict[str, Any]] = []
    best_overall: tuple[NonUniformPlan, Any] | None = None
    uniform: NonUniformPlan | None = None
    for algorithm in algorithms:
        if hetero:
            from meshplan.search.hetero import group_clusters, parse_gpu_groups, search_hetero

            groups = parse_gpu_groups(str(request.gpu))  # hetero implies a named --gpu
            if sum(n for _, n in groups) != request.num_gpus[0]:
                raise PlanError(f"--num-gpus {request.num_gpus[0]} differs from the {sum(n for _, n in groups)} GPUs "
                                f"of --gpu {request.gpu}; make them equal")
            whole = search_requests(request.model_copy(update={"gpu": groups[0][0]}))[0]
            h = search_hetero(whole, group_clusters(groups, request.gpus_per_node), algorithm,
                              cross_bytes_per_s=cross_group_gbps * 1e9 if cross_group_gbps else None)
            best, uniform, evaluations, seconds = h.best, h.best_uniform, h.evaluations, h.seconds
            where, history = (h.best_table.label() if h.best_table is not None else ""), h.history
        else:
            from meshplan.search.nonuniform_search import search_nonuniform

            single = search_requests(request)[0]
            r = search_nonuniform(single, algorithm)  # type: ignore[arg-type]
            best, uniform, evaluations, seconds, where = r.best, r.best_uniform, r.evaluations, r.seconds, ""
            history = r.history
        row = {"algorithm": algorithm, "evaluations": evaluations, "seconds": seconds, "groups": where,
               **(_row(best, uniform) if best is not None else {}),
               "history": [{"evaluations": e, "seconds": t, "tokens_per_s": v} for e, t, v in history]}
        rows.append(row)
        if best is not None and (best_overall is None or best.tokens_per_s > best_overall[0].tokens_per_s * (1 + 1e-12)):
            best_overall = (best, algorithm)
    if as_json:
        print(json.dumps({"uniform": _row(uniform, None) if uniform is not None else None, "results": rows}, indent=2))
    else:
        _print(request, rows, uniform)
    if best_overall is None:
        Console(stderr=True).print("[red]no non-uniform plan fits[/red]: the candidate bases are the uniform plans "
                                   "that fit; `meshplan plan` without --search says what would make one fit",
                                   highlight=False)
        sys.exit(1)
    if out is not None:
        if hetero:
            raise PlanError("--out: the Plan format holds one GPU type; a heterogeneous plan is printed, not written")
        from meshplan.plan import write_plan
        from meshplan.search.nonuniform_plan import to_plan

        plan, algorithm = best_overall
        write_plan(to_plan(plan, search_requests(request)[0], {"algorithm": algorithm, "objective": "throughput"}), out)
        Console(stderr=True).print(f"wrote {escape(str(out))}", highlight=False)


def _print(request: PlanRequest, rows: list[dict[str, Any]], uniform: NonUniformPlan | None) -> None:
    console = Console() if sys.stdout.isatty() else Console(width=160)
    devices = request.gpu or f"devices of {request.hardware}"
    title = (f"{request.model} on {request.num_gpus[0]} x {devices}, global batch {request.global_batch} x "
             f"{request.seq_len}: non-uniform plans")
    table = Table(title=title, title_justify="left")
    for name, justify in (("search", "left"), ("evals", "right"), ("time", "right"), ("strategy", "left"),
                          ("layers per stage", "left"), ("recompute", "left"), ("tokens/s", "right"),
                          ("vs uniform", "right"), ("peak GB", "right"), ("slowest", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        if "strategy" not in r:
            table.add_row(r["algorithm"], f"{r['evaluations']:,}", f"{r['seconds']:.2f} s", "nothing fits")
            continue
        gain = "" if r["gain_over_uniform"] is None else f"{r['gain_over_uniform']:+.1%}"
        strategy = r["strategy"] + (f" ({r['groups']})" if r["groups"] else "")
        table.add_row(r["algorithm"], f"{r['evaluations']:,}", f"{r['seconds']:.2f} s", escape(strategy),
                      runs_label(r["layers_per_stage"]), r["recompute_counts"], f"{r['tokens_per_s']:,.0f}",
                      gain, f"{r['peak_memory_bytes'] / GB:.1f}", f"stage {r['slowest_stage']}")
    print_tables([table], console)
    if uniform is not None:
        console.print(f"best uniform plan of the same bases (even split, one recomputation): "
                      f"{escape(uniform.strategy.label())}, layers {uniform.layers_label()}, "
                      f"recompute {uniform.recompute_label()}, {uniform.tokens_per_s:,.0f} tokens/s", highlight=False)
