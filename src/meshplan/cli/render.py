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
    for k, v in e.breakdown.items():
        if v > 0:
            time.add_row(k, _seconds(v), f"{v / e.step_time_s:.1%}", e.formulas.get(k, ""))

    mem = Table(title="memory per GPU (worst pipeline stage)", title_justify="left")
    mem.add_column("kind")
    mem.add_column("GB", justify="right")
    for k, v in e.memory_breakdown.items():
        if v > 0:
            mem.add_row(k, f"{v / GB:,.2f}")
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
