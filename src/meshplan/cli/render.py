"""Human output: rich tables of estimates and catalogs."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from meshplan.estimator import Estimate
from meshplan.specs import GpuSpec, ModelSpec

GB = 1e9  # bytes per displayed GB (decimal, as GPU datasheets count)


def _seconds(x: float) -> str:
    return f"{x * 1e3:,.1f} ms" if x < 1 else f"{x:,.3f} s"


def estimate_tables(e: Estimate) -> list[Table]:
    s = e.strategy
    head = Table(title=f"{e.model} on {e.num_gpus} x {e.gpu}: {s.label()}", show_header=False, title_justify="left",
                 min_width=72)
    head.add_column(style="bold")
    head.add_column(justify="right")
    rows = [
        ("step time", _seconds(e.step_time_s)),
        ("micro-batches per step", f"{e.num_microbatches:,}"),
        ("tokens/s", f"{e.tokens_per_s:,.0f}"),
        ("tokens/s per GPU", f"{e.tokens_per_s_per_gpu:,.1f}"),
        ("model TFLOP/s per GPU", f"{e.tflops_per_gpu:,.1f}"),
        ("MFU / HFU", f"{e.mfu:.1%} / {e.hfu:.1%}"),
        ("peak memory per GPU", f"{e.peak_memory_bytes / GB:,.1f} GB of {e.memory_capacity_bytes / GB:,.0f} GB"),
        ("fits", f"yes, {1 - e.peak_memory_bytes / e.memory_capacity_bytes:.0%} headroom" if e.fits
         else "[red]NO: exceeds GPU memory[/red]"),
    ]
    for k, v in rows:
        head.add_row(k, v)

    time = Table(title="step time breakdown", title_justify="left")
    time.add_column("term")
    time.add_column("time", justify="right")
    time.add_column("share", justify="right")
    time.add_column("source")
    for term, seconds in e.breakdown.items():
        if seconds > 0:
            time.add_row(term, _seconds(seconds), f"{seconds / e.step_time_s:.1%}", e.formulas.get(term, ""))

    mem = Table(title="memory per GPU (worst pipeline stage)", title_justify="left")
    mem.add_column("kind")
    mem.add_column("GB", justify="right")
    for kind, nbytes in e.memory_breakdown.items():
        if nbytes > 0:
            mem.add_row(kind, f"{nbytes / GB:,.2f}")
    mem.add_row("[bold]total[/bold]", f"[bold]{e.peak_memory_bytes / GB:,.2f}[/bold]")

    prov = Table(title="where the figures come from", title_justify="left", show_header=False)
    prov.add_column(style="bold")
    prov.add_column()
    for k, v in e.provenance.items():
        prov.add_row(k, v)
    return [head, time, mem, prov]


def models_table(models: list[ModelSpec]) -> Table:
    t = Table(title="model presets (meshplan/data/models)", title_justify="left")
    for col, justify in [("name", "left"), ("params", "right"), ("active", "right"), ("layers", "right"),
                         ("hidden", "right"), ("heads/kv", "right"), ("ffn", "right"), ("vocab", "right"),
                         ("experts", "right")]:
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for m in models:
        experts = f"{m.num_experts} top-{m.moe_topk}" + (f" +{m.num_shared_experts} shared" if m.num_shared_experts else "") if m.is_moe else "-"
        t.add_row(m.name, f"{m.total_params() / 1e9:,.2f}B", f"{m.active_params() / 1e9:,.2f}B", str(m.num_layers),
                  str(m.hidden), f"{m.num_heads}/{m.num_kv_heads}", str(m.ffn_hidden or m.moe_ffn_hidden), f"{m.vocab:,}", experts)
    return t


def gpus_table(gpus: list[GpuSpec]) -> Table:
    t = Table(title="GPU catalog: dense peak FLOP/s, link bandwidth per GPU per direction", title_justify="left",
              caption="aliases and datasheet sources: meshplan gpus --json", caption_justify="left")
    for col in ["name", "arch", "bf16 TF/s", "fp8 TF/s", "HBM GB", "HBM TB/s", "intra GB/s", "GPUs/node", "inter GB/s"]:
        t.add_column(col, justify="left" if col in ("name", "arch") else "right", no_wrap=True)
    for g in gpus:
        bf16 = g.peak_flops.get("bf16", g.peak_flops.get("fp16", 0.0))
        fp8 = g.peak_flops.get("fp8")
        t.add_row(g.name, g.architecture, f"{bf16 / 1e12:,.0f}", f"{fp8 / 1e12:,.0f}" if fp8 else "-", f"{g.hbm_bytes / 1e9:,.0f}",
                  f"{g.hbm_bytes_per_s / 1e12:.2f}", f"{g.intra_node_bytes_per_s / 1e9:,.0f}", str(g.default_gpus_per_node),
                  f"{g.default_inter_node_bytes_per_s / 1e9:,.1f}")
    return t


PIPE_WIDTH = 120  # characters: output written to a file or pipe is laid out this wide, not at 80


def print_tables(tables: list[Table], console: Console | None = None) -> None:
    console = console or (Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH))
    for t in tables:
        console.print(t)


def _short(s: float) -> str:
    return f"{s:,.2f}"


SCHEDULE_SHORT = {"1f1b": "1F1B", "interleaved": "I1F1B", "gpipe": "GPipe"}


def ranked_table(result, title: str) -> Table:  # type: ignore[no-untyped-def]
    """Top-k plans of one search result (the ep column only for MoE models). Plans whose figures equal the
    row above (e.g. trading cp for micro-batch at the same tokens per GPU) are folded into its caption."""
    r = result.ranked
    usable = result.request.cluster.gpu.hbm_bytes
    moe = result.request.model.is_moe
    t = Table(title=title, title_justify="left", caption_justify="left")
    cols = ["#", "dp", "tp", "pp", "cp"] + (["ep"] if moe else []) + ["vpp", "mb", "zero", "recomp", "sched", "sp",
                                                                        "step s", "tok/s/GPU", "MFU", "mem GB", "free"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("recomp", "sched", "sp") else "right", no_wrap=True)
    folded: dict[int, list[str]] = {}
    shown = -1
    for i in range(len(r)):
        s = r.table.row(i)
        mem = float(r.cost.peak_memory_bytes[i])
        step = float(r.cost.step_time_s[i])
        if shown >= 0 and abs(step / float(r.cost.step_time_s[shown]) - 1) < 1e-9 and \
                abs(mem / float(r.cost.peak_memory_bytes[shown]) - 1) < 1e-9:
            folded.setdefault(shown + 1, []).append(f"#{i + 1} {s.label()}")
            continue
        shown = i
        t.add_row(str(i + 1), str(s.dp), str(s.tp), str(s.pp), str(s.cp), *([str(s.ep)] if moe else []), str(s.vpp),
                  str(s.micro_batch), str(s.zero), s.recompute, SCHEDULE_SHORT[s.schedule],
                  "on" if s.sequence_parallel else "off", _short(step),
                  f"{float(r.cost.tokens_per_s_per_gpu[i]):,.1f}", f"{float(r.cost.mfu[i]):.1%}", f"{mem / GB:.1f}",
                  f"{1 - mem / usable:.0%}")
    if folded:
        t.caption = "\n".join(f"same figures as #{k}: " + "; ".join(v) for k, v in folded.items())
    return t


def pruning_lines(result) -> list[str]:  # type: ignore[no-untyped-def]
    pruned = sum(result.pruned.values())
    parts = "; ".join(f"{v:,} {k}" for k, v in sorted(result.pruned.items(), key=lambda kv: -kv[1]))
    return [f"{result.space_size:,} strategies enumerated in {result.seconds:.2f} s: {result.num_valid:,} valid, "
            f"{result.num_fit:,} fit in memory.", f"{pruned:,} pruned: {parts}."]


def sizes_table(results, train_tokens: float | None, price: float | None) -> Table:  # type: ignore[no-untyped-def]
    t = Table(title="best plan per cluster size", title_justify="left")
    cols = ["GPUs", "plan", "tokens/s", "tok/s/GPU", "MFU", "mem GB"]
    if train_tokens:
        cols.append("days to train")
    if train_tokens and price:
        cols.append("cost")
    for c in cols:
        t.add_column(c, justify="left" if c == "plan" else "right", no_wrap=True)
    for res in results:
        n = res.request.cluster.num_gpus
        if not len(res.ranked):
            t.add_row(str(n), "[red]nothing fits[/red]", *["-"] * (len(cols) - 2))
            continue
        tps = float(res.ranked.cost.tokens_per_s[0])
        row = [str(n), res.ranked.table.row(0).label(), f"{tps:,.0f}", f"{tps / n:,.1f}",
               f"{float(res.ranked.cost.mfu[0]):.1%}", f"{float(res.ranked.cost.peak_memory_bytes[0]) / GB:.1f}"]
        if train_tokens:
            seconds = train_tokens / tps
            row.append(f"{seconds / 86400:,.1f}")
            if price:
                row.append(f"${seconds / 3600 * n * price:,.0f}")
        t.add_row(*row)
    return t


def run_tables(result) -> list[Table]:  # type: ignore[no-untyped-def]
    """A measured run: per-rank time and memory, losses against the single-process reference."""
    cfg = result.config
    head = Table(title=f"{cfg.model.name}: {cfg.strategy.label()} on {result.world_size} processes ({result.backend}, "
                       f"torch {result.torch})", show_header=False, title_justify="left", min_width=72)
    head.add_column(style="bold")
    head.add_column(justify="right")
    head.add_row("step time (median after warm-up, slowest rank)", f"{result.step_time_s * 1e3:,.1f} ms")
    head.add_row("tokens/s", f"{result.tokens_per_s:,.0f}")
    head.add_row("peak memory (largest rank)", f"{result.peak_memory_bytes / 1e6:,.2f} MB")
    if result.max_loss_rel_diff is not None:
        ok = result.max_loss_rel_diff <= 1e-4 and (result.max_grad_norm_rel_diff or 0) <= 1e-4
        head.add_row("loss parity vs one process", f"{'ok' if ok else '[red]FAILED[/red]'}: losses within "
                     f"{result.max_loss_rel_diff:.1e}, gradient norms within {result.max_grad_norm_rel_diff:.1e}")
    ranks = Table(title="per rank", title_justify="left")
    for col in ("rank", "pp", "dp", "tp", "median step ms", "peak MB"):
        ranks.add_column(col, justify="right")
    for r in result.ranks:
        ranks.add_row(str(r.rank), str(r.coords["pp"]), str(r.coords["dp"]), str(r.coords["tp"]),
                      f"{r.median_step_time_s * 1e3:,.1f}", f"{r.memory.get('peak_bytes', 0) / 1e6:,.2f}")
    losses = Table(title="losses", title_justify="left")
    for col in ("step", "run", "one process", "grad norm", "one process "):
        losses.add_column(col, justify="right")
    ref = result.reference_losses or [float("nan")] * len(result.losses)
    ref_norm = result.reference_grad_norms or [float("nan")] * len(result.grad_norms)
    for i, (a, b, c, d) in enumerate(zip(result.losses, ref, result.grad_norms, ref_norm)):
        losses.add_row(str(i), f"{a:.6f}", f"{b:.6f}", f"{c:.6f}", f"{d:.6f}")
    return [head, ranks, losses]
