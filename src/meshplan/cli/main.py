"""`meshplan` command line: thin parsing into a request, a library call, printing."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from meshplan.errors import PlanError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find and price parallel strategies for training large language models.")

Opt = typer.Option

# Options shared by `estimate` and `plan`.
ModelOpt = Annotated[Optional[str], Opt(help="Preset name or path to a Hugging Face config.json.")]
GpuOpt = Annotated[Optional[str], Opt(help="GPU name, e.g. H100, A100-80GB (see `meshplan gpus`).")]
GlobalBatchOpt = Annotated[Optional[int], Opt(help="Sequences per optimizer step.")]
SeqLenOpt = Annotated[Optional[int], Opt(help="Tokens per sequence.")]
GpusPerNodeOpt = Annotated[Optional[int], Opt(help="GPUs per NVLink domain (default: the GPU's usual system).")]
IntraOpt = Annotated[Optional[float], Opt(help="NVLink bandwidth per GPU per direction, GB/s.")]
InterOpt = Annotated[Optional[float], Opt(help="Network bandwidth per GPU per direction, GB/s.")]
PrecisionOpt = Annotated[str, Opt(help="bf16, fp16 or fp8.")]
FlashOpt = Annotated[bool, Opt(help="Fused attention kernels (no stored score matrix).")]
OverlapOpt = Annotated[bool, Opt(help="TP collectives overlapped with GEMMs (Megatron-Core/TE).")]
CrossNodeTpOpt = Annotated[bool, Opt("--allow-cross-node-tp", help="Let tensor parallelism span nodes.")]
HardwareOpt = Annotated[Optional[str], Opt(help="A measured hardware profile (meshplan profile --out) instead of --gpu.")]


def _fail(message: str) -> None:
    Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _json_line(line: str, price: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """One `--batch` line: its result as JSON, or {"error": ...} for a bad line."""
    try:
        fields = json.loads(line)
    except json.JSONDecodeError as exc:
        return {"error": f"not a JSON object ({exc.msg} at column {exc.colno}); write one JSON object per line"}
    if not isinstance(fields, dict):
        return {"error": "not a JSON object; write one JSON object per line"}
    try:
        return dict(price(fields).model_dump(mode="json"))
    except PlanError as exc:
        return {"error": str(exc)}


def _run_batch(batch: Path, price_line: Callable[[str], dict[str, Any]]) -> None:
    """Print one JSON result per non-empty line of the JSONL file `batch`, in order."""
    if not batch.is_file():
        _fail(f"--batch {str(batch)!r} is not a file; pass a JSONL file with one request per line")
    lines = [line for line in batch.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        _fail(f"--batch {str(batch)!r} holds no requests; write one JSON object per line")
    for line in lines:
        print(json.dumps(price_line(line)), flush=True)


def _alone(flag: str, given: dict[str, Any]) -> None:
    """Refuse flags that `flag` (a file holding the whole request) would silently ignore."""
    ignored = [name for name, value in given.items() if value is not None]
    if ignored:
        _fail(f"{flag} takes the whole request from its file and would ignore {', '.join(ignored)}; drop them")


def _check_out(path: Path | None, flag: str = "--out") -> None:
    """Refuse an output path that cannot be written, before the work whose result it would hold."""
    if path is None:
        return
    folder = path.parent
    if path.is_dir():
        raise PlanError(f"cannot write {flag} {str(path)!r}: it is a folder; give a file name")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise PlanError(f"cannot write {flag} {str(path)!r}: folder {str(folder)!r} does not exist or is not "
                        "writable; choose a writable path")


def _estimate_line(line: str) -> dict[str, Any]:
    from meshplan.estimator import estimate

    return _json_line(line, estimate)


@app.command("estimate")
def estimate_cmd(
    model: ModelOpt = None,
    gpu: GpuOpt = None,
    num_gpus: Annotated[Optional[int], Opt(help="GPUs in the job.")] = None,
    global_batch: GlobalBatchOpt = None,
    seq_len: SeqLenOpt = None,
    gpus_per_node: GpusPerNodeOpt = None,
    intra_node_gbps: IntraOpt = None,
    inter_node_gbps: InterOpt = None,
    precision: PrecisionOpt = "bf16",
    flash_attention: FlashOpt = True,
    tp_comm_overlap: OverlapOpt = False,
    allow_cross_node_tp: CrossNodeTpOpt = False,
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
    hardware: HardwareOpt = None,
    batch: Annotated[Optional[Path], Opt(help="JSONL file: one request per line, one JSON result per line.")] = None,
    plan: Annotated[Optional[Path], Opt(help="A plan.json written by `meshplan plan --out`: price it again.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object.")] = False,
) -> None:
    """Predict step time, throughput, MFU and peak memory of one training strategy."""
    if plan is not None or batch is not None:
        _alone("--plan" if plan is not None else "--batch", {"--model": model, "--gpu": gpu, "--num-gpus": num_gpus,
               "--global-batch": global_batch, "--seq-len": seq_len, "--hardware": hardware,
               "--batch": batch if plan is not None else None})
    if plan is not None:
        from meshplan.plan import read_plan, reprice

        try:
            result = reprice(read_plan(plan))
        except PlanError as exc:
            _fail(str(exc))
            return
        _print_estimate(result, as_json)
        return
    if batch is not None:
        _run_batch(batch, _estimate_line)
        return
    missing = [flag for flag, v in [("--model", model), ("--gpu", gpu or hardware), ("--num-gpus", num_gpus),
                                    ("--global-batch", global_batch), ("--seq-len", seq_len)] if v is None]
    if missing:
        _fail(f"missing {', '.join(missing)}; `meshplan estimate --help` shows every option")
    from meshplan.estimator import estimate, parse_request

    fields = dict(model=model, gpu=gpu, num_gpus=num_gpus, global_batch=global_batch, seq_len=seq_len,
                  gpus_per_node=gpus_per_node, intra_node_gbps=intra_node_gbps, inter_node_gbps=inter_node_gbps,
                  precision=precision, flash_attention=flash_attention, tp_comm_overlap=tp_comm_overlap, allow_cross_node_tp=allow_cross_node_tp, tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, vpp=vpp,
                  micro_batch=micro_batch, zero=zero, recompute=recompute, sequence_parallel=sequence_parallel,
                  schedule=schedule, hardware=hardware)
    try:
        result = estimate(parse_request(fields))
    except PlanError as exc:
        _fail(str(exc))
        return
    _print_estimate(result, as_json)


def _print_estimate(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
        return
    from meshplan.cli.render import estimate_tables, print_tables

    print_tables(estimate_tables(result))


@app.command("plan")
def plan_cmd(
    model: ModelOpt = None,
    gpu: GpuOpt = None,
    num_gpus: Annotated[Optional[str], Opt(help="GPUs in the job; several sizes as 64,128,256.")] = None,
    global_batch: GlobalBatchOpt = None,
    seq_len: SeqLenOpt = None,
    gpus_per_node: GpusPerNodeOpt = None,
    intra_node_gbps: IntraOpt = None,
    inter_node_gbps: InterOpt = None,
    precision: PrecisionOpt = "bf16",
    flash_attention: FlashOpt = True,
    tp_comm_overlap: OverlapOpt = False,
    allow_cross_node_tp: CrossNodeTpOpt = False,
    objective: Annotated[str, Opt(help="throughput, memory, or min-gpus (with --target-tokens-per-s).")] = "throughput",
    target_tokens_per_s: Annotated[Optional[float], Opt(help="Job throughput the min-gpus objective must reach.")] = None,
    memory_headroom: Annotated[float, Opt(help="Fraction of GPU memory to keep free, e.g. 0.1.")] = 0.0,
    tp: Annotated[Optional[int], Opt(help="Pin tensor parallelism.")] = None,
    pp: Annotated[Optional[int], Opt(help="Pin pipeline parallelism.")] = None,
    dp: Annotated[Optional[int], Opt(help="Pin data parallelism.")] = None,
    cp: Annotated[Optional[int], Opt(help="Pin context parallelism.")] = None,
    ep: Annotated[Optional[int], Opt(help="Pin expert parallelism.")] = None,
    vpp: Annotated[Optional[int], Opt(help="Pin virtual pipeline stages.")] = None,
    micro_batch: Annotated[Optional[int], Opt(help="Pin the micro-batch size.")] = None,
    zero: Annotated[Optional[int], Opt(help="Pin the ZeRO stage (0-3).")] = None,
    recompute: Annotated[Optional[str], Opt(help="Pin recomputation: none, selective or full.")] = None,
    schedule: Annotated[Optional[str], Opt(help="Pin the schedule: 1f1b, interleaved or gpipe.")] = None,
    sequence_parallel: Annotated[Optional[bool], Opt("--sequence-parallel/--no-sequence-parallel",
                                                     help="Pin sequence parallelism on or off.")] = None,
    max_tp: Annotated[Optional[int], Opt(help="Largest tp to consider.")] = None,
    max_pp: Annotated[Optional[int], Opt(help="Largest pp to consider.")] = None,
    max_cp: Annotated[Optional[int], Opt(help="Largest cp to consider.")] = None,
    max_ep: Annotated[Optional[int], Opt(help="Largest ep to consider.")] = None,
    no_cp: Annotated[bool, Opt("--no-cp", help="No context parallelism (same as --cp 1).")] = False,
    top_k: Annotated[int, Opt(help="Plans to show (and to write with --json); 0 for every plan that fits.")] = 10,
    train_tokens: Annotated[Optional[str], Opt(help="Tokens to train on, e.g. 15T: adds the time to train.")] = None,
    gpu_hour_price: Annotated[Optional[float], Opt(help="Price per GPU-hour: adds the cost (needs --train-tokens).")] = None,
    explain: Annotated[bool, Opt("--explain", help="Why the winner beats the runners-up, term by term.")] = False,
    out: Annotated[Optional[Path], Opt(help="Write the winning plan to this JSON file.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the ranked plans as JSON.")] = False,
    search: Annotated[str, Opt(help="exhaustive (uniform plans), or non-uniform stages and per-layer "
                                    "recomputation: dp, genetic, policy-gradient, all.")] = "exhaustive",
    cross_group_gbps: Annotated[Optional[float], Opt(help="Link between device groups of --gpu A:n,B:m, GB/s per GPU.")] = None,
    hardware: HardwareOpt = None,
) -> None:
    """Search every parallel strategy and rank those that fit."""
    missing = [flag for flag, v in [("--model", model), ("--gpu", gpu or hardware), ("--num-gpus", num_gpus),
                                    ("--global-batch", global_batch), ("--seq-len", seq_len)] if v is None]
    if missing:
        _fail(f"missing {', '.join(missing)}; `meshplan plan --help` shows every option")
    from meshplan.planning import choose, parse_count, parse_plan_request, parse_sizes, run_plan, to_plan

    try:
        if no_cp and cp not in (None, 1):
            raise PlanError(f"--no-cp contradicts --cp {cp}; drop one of them")
        if cross_group_gbps is not None and ":" not in str(gpu):
            raise PlanError("--cross-group-gbps prices the link between device groups; it needs --gpu A:n,B:m")
        if cross_group_gbps is not None and not cross_group_gbps > 0:
            raise PlanError(f"--cross-group-gbps {cross_group_gbps} must be a positive GB/s per GPU")
        _check_out(out)
        if out is not None and ":" in str(gpu):  # before the search, not after its table
            raise PlanError("--out: the Plan format holds one GPU type; a heterogeneous plan is printed, not written")
        constraints: dict[str, Any] = dict(tp=tp, pp=pp, dp=dp, cp=1 if no_cp else cp, ep=ep, vpp=vpp, micro_batch=micro_batch,
                           zero=zero, recompute=recompute, schedule=schedule, sequence_parallel=sequence_parallel,
                           max_tp=max_tp, max_pp=max_pp, max_cp=max_cp, max_ep=max_ep)
        for name in ("tp", "pp", "cp", "ep"):
            pin, cap = constraints[name], constraints[f"max_{name}"]
            if pin is not None and cap is not None and pin > cap:
                raise PlanError(f"--{name} {pin} contradicts --max-{name} {cap}; drop one of them")
        request = parse_plan_request(dict(
            model=model, gpu=gpu, num_gpus=parse_sizes(str(num_gpus)), global_batch=global_batch, seq_len=seq_len,
            gpus_per_node=gpus_per_node, intra_node_gbps=intra_node_gbps, inter_node_gbps=inter_node_gbps,
            precision=precision, flash_attention=flash_attention, tp_comm_overlap=tp_comm_overlap, allow_cross_node_tp=allow_cross_node_tp,
            constraints={k: v for k, v in constraints.items() if v is not None}, objective=objective,
            target_tokens_per_s=target_tokens_per_s, memory_headroom=memory_headroom, top_k=top_k,
            train_tokens=parse_count(train_tokens, "--train-tokens") if train_tokens else None,
            gpu_hour_price=gpu_hour_price, hardware=hardware))
        if search != "exhaustive" or ":" in str(gpu):
            from meshplan.cli.nonuniform import plan_nonuniform

            return plan_nonuniform(request, "dp" if search == "exhaustive" else search, out, as_json, cross_group_gbps)
        results = _run_with_progress(run_plan, request)
        chosen = choose(request, results)
    except PlanError as exc:
        _fail(str(exc))
        return
    if as_json:
        _print_plan_json(request, results, chosen)
    else:
        _print_plan_tables(request, results, chosen, explain)
    if out is not None and chosen is not None:
        from meshplan.plan import write_plan

        write_plan(to_plan(chosen), out)
        Console(stderr=True).print(f"wrote {escape(str(out))}", highlight=False)
    if chosen is None:
        raise typer.Exit(1)


def _run_with_progress(run: Any, request: Any) -> Any:
    """Run the search with a progress bar on stderr when the space is large."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        return run(request)
    with Progress(TextColumn("searching"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("search", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return run(request, progress=progress)


def _print_plan_json(request: Any, results: list[Any], chosen: Any) -> None:
    from meshplan.estimator import estimate_from_cost
    from meshplan.planning import what_would_fit

    out: dict[str, Any] = {"objective": request.objective, "results": []}
    for res in results:
        req = res.request
        ranked = [estimate_from_cost(res.ranked.cost, i, req.model, req.cluster, req.workload, res.ranked.table)
                  .model_dump(mode="json") for i in range(len(res.ranked))]
        out["results"].append({
            "num_gpus": req.cluster.num_gpus, "strategies_enumerated": res.space_size,
            "strategies_valid": res.num_valid, "strategies_fitting": res.num_fit, "pruned": res.pruned,
            "seconds": res.seconds, "ranked": ranked,
            **({} if ranked else {"what_would_fit": what_would_fit(res)}),
        })
    out["chosen_num_gpus"] = chosen.request.cluster.num_gpus if chosen is not None else None
    print(json.dumps(out, indent=2))


def _print_plan_tables(request: Any, results: list[Any], chosen: Any, explain: bool) -> None:
    from meshplan.cli.render import print_tables, pruning_lines, ranked_table, sizes_table
    from meshplan.explain import compare_runners_up, explain_neighbours
    from meshplan.planning import what_would_fit

    console = Console() if sys.stdout.isatty() else Console(width=120)
    if len(results) > 1:
        print_tables([sizes_table(results, request.train_tokens, request.gpu_hour_price)], console)
    shown = chosen or results[-1]
    req = shown.request
    title = (f"{req.model.name} on {req.cluster.num_gpus} x {req.cluster.gpu.name}, global batch "
             f"{req.workload.global_batch} x {req.workload.seq_len} tokens, {req.workload.precision}: "
             f"top {len(shown.ranked)} by {request.objective}")
    if len(shown.ranked):
        print_tables([ranked_table(shown, title)], console)
    for line in pruning_lines(shown):
        console.print(escape(line), highlight=False)
    if chosen is None:
        if request.objective == "min-gpus" and any(len(r.ranked) for r in results):
            best = max((r for r in results if len(r.ranked)), key=lambda r: float(r.ranked.cost.tokens_per_s[0]))
            console.print(f"[red]no size reaches {request.target_tokens_per_s:,.0f} tokens/s[/red]; the best is "
                          f"{float(best.ranked.cost.tokens_per_s[0]):,.0f} tokens/s on {best.request.cluster.num_gpus} "
                          f"GPUs: try larger sizes", highlight=False)
        else:
            console.print("[red]nothing fits.[/red] What would:", highlight=False)
            for hint in what_would_fit(shown):
                console.print(f"  - {escape(hint)}", highlight=False)
        return
    if request.train_tokens and len(results) == 1:
        tps = float(chosen.ranked.cost.tokens_per_s[0])
        days = request.train_tokens / tps / 86400
        cost = (f", ${request.train_tokens / tps / 3600 * req.cluster.num_gpus * request.gpu_hour_price:,.0f}"
                if request.gpu_hour_price else "")
        console.print(f"time to train {request.train_tokens:,.0f} tokens: {days:,.1f} days{cost}", highlight=False)
    if explain:
        console.print("\n[bold]why the winner wins[/bold]")
        for line in compare_runners_up(chosen) + explain_neighbours(chosen):
            console.print(f"  {escape(line)}", highlight=False)


@app.command("run")
def run_cmd(
    plan: Annotated[Path, typer.Argument(help="A plan.json written by `meshplan plan --out`.")],
    model: Annotated[Optional[str], Opt(help="Run the layout on another model: tiny, tiny-moe, a preset or a config.json.")] = None,
    steps: Annotated[int, Opt(help="Optimizer steps.")] = 5,
    nproc: Annotated[Optional[int], Opt(help="Processes (default: the plan's GPUs); dp is rescaled to fit.")] = None,
    seq_len: Annotated[Optional[int], Opt(help="Tokens per sequence (default: the plan's, or 64 with --model).")] = None,
    global_batch: Annotated[Optional[int], Opt(help="Sequences per step (default: the plan's, or dp*mb*pp).")] = None,
    timeout: Annotated[float, Opt(help="Seconds a collective may wait before the run fails.")] = 300.0,
    as_json: Annotated[bool, Opt("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Execute a plan with PyTorch (torchrun; gloo on CPU, NCCL on GPU) and check loss parity."""
    from meshplan.cli.serve import is_serving_plan, run_serving_plan

    if is_serving_plan(plan):  # serving mode: prefill then decode on CPU processes, measured vs predicted
        return run_serving_plan(plan, model=model, nproc=nproc, osl=steps, isl=seq_len, batch=global_batch,
                                as_json=as_json)
    if steps <= 0:
        _fail(f"--steps {steps} must be positive")
    if nproc is not None and nproc <= 0:
        _fail(f"--nproc {nproc} must be positive (processes to launch)")
    from meshplan.run import require_torch

    try:
        require_torch()
        from meshplan.run.launch import RunFailed, launch
        from meshplan.run.plan_run import config_from_plan

        cfg, notes = config_from_plan(plan, model=model, nproc=nproc, steps=steps, seq_len=seq_len,
                                      global_batch=global_batch, timeout_s=timeout)
    except PlanError as exc:
        _fail(str(exc))
        return
    err = Console(stderr=True)
    for note in notes if os.environ.get("RANK", "0") == "0" else []:
        err.print(f"note: {escape(note)}", highlight=False)
    try:
        result = launch(cfg, cfg.strategy.num_gpus)
    except PlanError as exc:
        _fail(str(exc))
        return
    except RunFailed as exc:
        err.print(f"[red]run failed:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if result is None:  # a rank other than 0 of an outer torchrun: rank 0 reports
        return
    if as_json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        from meshplan.cli.render import print_tables, run_tables

        print_tables(run_tables(result))
    if result.max_loss_rel_diff is not None and result.max_loss_rel_diff > 1e-4:
        raise typer.Exit(1)


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


from meshplan.cli.shard import shard_cmd  # noqa: E402  (its own module; registered here)

app.command("shard")(shard_cmd)

from meshplan.cli.serve import serve_cmd  # noqa: E402

app.command("serve")(serve_cmd)

from meshplan.cli.measure import register as _register_measure  # profile, validate, calibrate, tune

_register_measure(app)


def main() -> None:
    """Console-script entry point: PlanError anywhere becomes one line on stderr and exit status 2."""
    try:
        app()
    except PlanError as exc:  # pragma: no cover - commands catch their own; this is the safety net
        Console(stderr=True).print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
