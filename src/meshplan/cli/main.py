"""`meshplan` command line: thin parsing into a request, a library call, printing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from meshplan.errors import PlanError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find and price parallel strategies for training large language models.")

Opt = typer.Option


def _fail(message: str) -> None:
    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _estimate_line(line: str) -> dict[str, Any]:
    from meshplan.estimator import estimate

    try:
        fields = json.loads(line)
    except json.JSONDecodeError as exc:
        return {"error": f"not a JSON object ({exc.msg} at column {exc.colno}); write one JSON object per line"}
    if not isinstance(fields, dict):
        return {"error": "not a JSON object; write one JSON object per line"}
    try:
        return estimate(fields).model_dump(mode="json")
    except PlanError as exc:
        return {"error": str(exc)}


@app.command("estimate")
def estimate_cmd(
    model: Annotated[Optional[str], Opt(help="Preset name or path to a Hugging Face config.json.")] = None,
    gpu: Annotated[Optional[str], Opt(help="GPU name, e.g. H100, A100-80GB (see `meshplan gpus`).")] = None,
    num_gpus: Annotated[Optional[int], Opt(help="GPUs in the job.")] = None,
    global_batch: Annotated[Optional[int], Opt(help="Sequences per optimizer step.")] = None,
    seq_len: Annotated[Optional[int], Opt(help="Tokens per sequence.")] = None,
    gpus_per_node: Annotated[Optional[int], Opt(help="GPUs per NVLink domain (default: the GPU's usual system).")] = None,
    intra_node_gbps: Annotated[Optional[float], Opt(help="NVLink bandwidth per GPU per direction, GB/s.")] = None,
    inter_node_gbps: Annotated[Optional[float], Opt(help="Network bandwidth per GPU per direction, GB/s.")] = None,
    precision: Annotated[str, Opt(help="bf16, fp16 or fp8.")] = "bf16",
    flash_attention: Annotated[bool, Opt(help="Fused attention kernels (no stored score matrix).")] = True,
    tp_comm_overlap: Annotated[bool, Opt(help="TP collectives overlapped with GEMMs (Megatron-Core/TE).")] = False,
    tp: Annotated[int, Opt(help="Tensor-parallel degree.")] = 1,
    pp: Annotated[int, Opt(help="Pipeline-parallel degree.")] = 1,
    dp: Annotated[Optional[int], Opt(help="Data-parallel degree (default: num_gpus / (tp*pp*cp)).")] = None,
    cp: Annotated[int, Opt(help="Context-parallel degree.")] = 1,
    ep: Annotated[int, Opt(help="Expert-parallel degree (divides dp*cp).")] = 1,
    vpp: Annotated[int, Opt(help="Virtual pipeline stages per rank (interleaved 1F1B when > 1).")] = 1,
    micro_batch: Annotated[int, Opt(help="Sequences per micro-batch.")] = 1,
    zero: Annotated[int, Opt(help="ZeRO stage 0-3 (1 = distributed optimizer, 3 = FSDP).")] = 1,
    recompute: Annotated[str, Opt(help="Activation recomputation: none, selective or full.")] = "none",
    sequence_parallel: Annotated[Optional[bool], Opt("--sequence-parallel/--no-sequence-parallel",
                                                     help="(default: on when tp > 1)")] = None,
    schedule: Annotated[Optional[str], Opt(help="1f1b, interleaved or gpipe (default: interleaved if vpp > 1).")] = None,
    batch: Annotated[Optional[Path], Opt(help="JSONL file: one request per line, one JSON result per line.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object.")] = False,
) -> None:
    """Predict step time, throughput, MFU and peak memory of one training strategy."""
    if batch is not None:
        if not batch.is_file():
            _fail(f"--batch {str(batch)!r} is not a file; pass a JSONL file with one request per line")
        for line in batch.read_text(encoding="utf-8").splitlines():
            if line.strip():
                print(json.dumps(_estimate_line(line)), flush=True)
        return
    missing = [flag for flag, v in [("--model", model), ("--gpu", gpu), ("--num-gpus", num_gpus),
                                    ("--global-batch", global_batch), ("--seq-len", seq_len)] if v is None]
    if missing:
        _fail(f"missing {', '.join(missing)}; `meshplan estimate --help` shows every option")
    from meshplan.estimator import estimate, parse_request

    fields = dict(model=model, gpu=gpu, num_gpus=num_gpus, global_batch=global_batch, seq_len=seq_len,
                  gpus_per_node=gpus_per_node, intra_node_gbps=intra_node_gbps, inter_node_gbps=inter_node_gbps,
                  precision=precision, flash_attention=flash_attention, tp_comm_overlap=tp_comm_overlap, tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, vpp=vpp,
                  micro_batch=micro_batch, zero=zero, recompute=recompute, sequence_parallel=sequence_parallel,
                  schedule=schedule)
    try:
        result = estimate(parse_request(fields))
    except PlanError as exc:
        _fail(str(exc))
        return
    if as_json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
        return
    from meshplan.cli.render import estimate_tables, print_tables

    print_tables(estimate_tables(result))


@app.command("models")
def models_cmd(as_json: Annotated[bool, Opt("--json", help="Print JSON.")] = False) -> None:
    """List the built-in model presets with their parameter counts."""
    from meshplan.specs import model_catalog

    models = sorted(model_catalog().values(), key=lambda m: m.name.lower())
    if as_json:
        print(json.dumps([{**m.model_dump(mode="json"), "total_params": m.total_params(),
                           "active_params": m.active_params()} for m in models], indent=2))
        return
    from meshplan.cli.render import models_table, print_tables

    print_tables([models_table(models)])


@app.command("gpus")
def gpus_cmd(as_json: Annotated[bool, Opt("--json", help="Print JSON.")] = False) -> None:
    """List the GPU catalog with datasheet figures."""
    from meshplan.specs import gpu_catalog

    gpus = list(gpu_catalog().values())
    if as_json:
        print(json.dumps([g.model_dump(mode="json") for g in gpus], indent=2))
        return
    from meshplan.cli.render import gpus_table, print_tables

    print_tables([gpus_table(gpus)])


def main() -> None:
    """Console-script entry point: PlanError anywhere becomes one line on stderr and exit status 2."""
    try:
        app()
    except PlanError as exc:  # pragma: no cover - commands catch their own; this is the safety net
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
