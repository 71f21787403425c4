"""`meshplan serve`: search (or price, with --estimate) LLM serving deployments."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from meshplan.errors import PlanError

Opt = typer.Option


def _fail(message: str) -> None:
    from meshplan.cli.main import _fail as fail

    fail(message)


def _rate(text: str | None) -> float | None:
    if text is None:
        return None
    if text.strip().lower() in ("inf", "infinity"):
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise PlanError(f"--request-rate {text!r} is not a number; give requests/s, or 'inf' for all at once") from None
    if not value > 0:
        raise PlanError(f"--request-rate {text} must be positive (requests/s; 'inf' = all at once)")
    return value


def _prices(text: str | None, gpus: list[str]) -> dict[str, float]:
    """'2.5' (every GPU) or 'H100=2.5,H200=3.5' -> {catalog name: $/GPU-hour}."""
    from meshplan.specs import load_gpu

    if not text:
        return {}
    out: dict[str, float] = {}
    try:
        if "=" not in text:
            return {load_gpu(g).name: float(text) for g in gpus}
        for item in text.split(","):
            name, _, value = item.partition("=")
            out[load_gpu(name.strip()).name] = float(value)
    except ValueError:
        raise PlanError(f"--gpu-hour-price {text!r} is not like 2.5 or H100=2.5,H200=3.5") from None
    if any(v <= 0 for v in out.values()):
        raise PlanError(f"--gpu-hour-price {text!r}: prices must be positive")
    return out


def _estimate_line(line: str) -> dict[str, Any]:
    from meshplan.cli.main import _json_line
    from meshplan.serve.estimate import estimate_serving

    return _json_line(line, lambda fields: estimate_serving({"simulate": False, **fields}))


def _ms(x: float) -> str:
    return f"{x:,.1f}" if x < 1000 else f"{x:,.0f}"


def estimate_tables(e: Any) -> list[Table]:
    d = e.deployment
    head = Table(title=f"{e.model} on {e.num_gpus} x {e.gpu}: {d.label()} ({e.engine})", show_header=False,
                 title_justify="left", min_width=72)
    head.add_column(style="bold")
    head.add_column(justify="right")
    w = e.workload
    load = f"concurrency {w.concurrency}" if w.concurrency else f"rate {w.request_rate:g} req/s"
    pct = e.percentiles
    rows = [
        ("workload", f"isl {w.isl}, osl {w.osl}, {load}"),
        ("TTFT mean", f"{_ms(e.ttft_ms)} ms"),
        ("TPOT mean", f"{_ms(e.tpot_ms)} ms"),
    ]
    for m, name in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT")):
        if m in pct:
            rows.append((f"{name} p50 / p90 / p99", " / ".join(f"{_ms(v)}" for v in pct[m].values()) + " ms"))
    rows += [
        ("output tokens/s", f"{e.output_tokens_per_s_total:,.0f}"),
        ("output tokens/s per GPU", f"{e.output_tokens_per_s_per_gpu:,.1f}"),
        ("output tokens/s per user", f"{e.output_tokens_per_s_per_user:,.1f}"),
        ("sequences in flight per instance", f"{e.batch:,.0f}"),
        ("KV cache per instance", f"{e.kv_capacity_tokens:,.0f} tokens"),
        ("memory per GPU", ", ".join(f"{k} {v:,.1f} GB" for k, v in e.memory_gb.items())),
    ]
    if e.disagg:
        rows.append(("disaggregated", (f"prefill {e.disagg['prefill_requests_per_s']:.2f} req/s, decode "
                                      f"{e.disagg['decode_requests_per_s']:.2f} req/s, bottleneck {e.disagg['bottleneck']}, "
                                      f"KV transfer {e.disagg['kv_transfer_ms']:.1f} ms")))
    for k, v in rows:
        head.add_row(k, v)
    terms = Table(title="iteration time at the steady-state load", title_justify="left")
    terms.add_column("term")
    terms.add_column("ms", justify="right")
    terms.add_column("source")
    for k, v in e.breakdown.items():
        if v > 0:
            terms.add_row(k, f"{v:,.2f}", e.formulas.get(k, ""))
    prov = Table(title="where the figures come from", title_justify="left", show_header=False)
    prov.add_column(style="bold")
    prov.add_column()
    for k, v in e.provenance.items():
        prov.add_row(k, v)
    return [head, terms, prov]


def ranked_table(result: Any, title: str, show_cost: bool, targets: bool) -> Table:
    t = Table(title=title, title_justify="left")
    cols = ["#", "GPU", "deployment", "GPUs", "TTFT ms", "TPOT ms", "tok/s/GPU", "tok/s/user", "KV tokens"]
    cols += ["p-tile TTFT/TPOT ms"] if targets else []
    cols += ["$/M tok"] if show_cost else []
    for col in cols:
        t.add_column(col, justify="left" if col in ("GPU", "deployment") else "right",
                     no_wrap=col == "deployment")
    for i, c in enumerate(result.ranked, 1):
        row = [str(i), c.gpu.replace("-SXM", ""), c.label, str(c.num_gpus), _ms(c.ttft_s * 1e3),
               _ms(c.tpot_s * 1e3), f"{c.per_gpu:,.1f}", f"{c.per_user:,.1f}", f"{c.kv_tokens / 1e6:,.2f}M"]
        if targets:
            row.append(" / ".join("-" if v is None else _ms(v * 1e3) for v in (c.ttft_pct_s, c.tpot_pct_s)))
        if show_cost:
            row.append("-" if c.cost_per_m_tokens is None else f"{c.cost_per_m_tokens:,.3f}")
        t.add_row(*row)
    return t


def pareto_table(front: list[Any]) -> Table:
    t = Table(title="Pareto frontier: tokens/s per GPU against tokens/s per user (of the plans within the mean "
                    "targets)", title_justify="left")
    for col in ("GPU", "deployment", "tok/s/user", "tok/s/GPU", "TTFT ms"):
        t.add_column(col, justify="left" if col in ("GPU", "deployment") else "right")
    step = max(1, len(front) // 12)
    for c in front[::step]:
        t.add_row(c.gpu, c.label, f"{c.per_user:,.1f}", f"{c.per_gpu:,.1f}", _ms(c.ttft_s * 1e3))
    return t


def serve_cmd(
    model: Annotated[str | None, Opt(help="Preset name or path to a Hugging Face config.json.")] = None,
    gpu: Annotated[str | None, Opt(help="GPU type, or several: H100,H200,B200.")] = None,
    num_gpus: Annotated[int | None, Opt(help="GPUs (per GPU type); the upper bound for --objective gpus.")] = None,
    isl: Annotated[int | None, Opt(help="Prompt length, tokens (mean).")] = None,
    osl: Annotated[int | None, Opt(help="Output length, tokens (mean).")] = None,
    concurrency: Annotated[int | None, Opt(help="Closed loop: requests in flight.")] = None,
    request_rate: Annotated[str | None, Opt(help="Poisson arrivals, requests/s ('inf' = all at once).")] = None,
    prefix_hit: Annotated[float, Opt(help="Prefix-cache hit rate of prompt tokens, 0..1.")] = 0.0,
    length_cv: Annotated[float, Opt(help="Spread of lengths (coefficient of variation) in the simulation.")] = 0.0,
    isl_hist: Annotated[Path | None, Opt(help="CSV 'tokens,count': prompt-length histogram (instead of --isl).")] = None,
    osl_hist: Annotated[Path | None, Opt(help="CSV 'tokens,count': output-length histogram (instead of --osl).")] = None,
    trace: Annotated[Path | None, Opt(help="CSV 'arrival_s,isl,osl': requests to replay (instead of a rate).")] = None,
    ttft: Annotated[str | None, Opt(help="TTFT target, e.g. 2s@p90.")] = None,
    tpot: Annotated[str | None, Opt(help="TPOT target, e.g. 50ms@p99.")] = None,
    objective: Annotated[str, Opt(help="throughput (tok/s per GPU), gpus (fewest for --request-rate), cost.")] = "throughput",
    gpu_hour_price: Annotated[str | None, Opt(help="$ per GPU-hour: 2.5, or H100=2.5,H200=3.5.")] = None,
    precision: Annotated[str | None, Opt(help="Weight precisions to search (default bf16,fp8); --estimate: one (default bf16).")] = None,
    kv_dtype: Annotated[str | None, Opt(help="KV-cache dtype (estimate; default fp8 with fp8/fp4 weights).")] = None,
    engine: Annotated[str, Opt(help="Engine whose defaults and fitted overheads apply: vllm, sglang, trtllm.")] = "vllm",
    tp: Annotated[int, Opt(help="Tensor parallelism (estimate).")] = 1,
    pp: Annotated[int, Opt(help="Pipeline parallelism (estimate).")] = 1,
    ep: Annotated[int, Opt(help="Expert parallelism (estimate).")] = 1,
    attn_dp: Annotated[int, Opt(help="Attention data parallelism for MoE (estimate).")] = 1,
    replicas: Annotated[int | None, Opt(help="Engine instances (estimate; default fills --num-gpus).")] = None,
    max_batch: Annotated[int | None, Opt(help="Sequences in flight per instance (estimate).")] = None,
    chunk_tokens: Annotated[int | None, Opt(help="Chunked-prefill tokens per iteration (estimate).")] = None,
    max_pp: Annotated[int, Opt(help="Largest pp the search considers.")] = 4,
    disagg: Annotated[bool, Opt("--disagg", help="Also search prefill/decode disaggregation (x + y workers).")] = False,
    estimate: Annotated[bool, Opt("--estimate", help="Price the one deployment given by the flags.")] = False,
    batch: Annotated[Path | None, Opt(help="With --estimate: JSONL, one request per line, one JSON result per line.")] = None,
    plan: Annotated[Path | None, Opt(help="A serving plan.json (from --out): price it again.")] = None,
    top_k: Annotated[int, Opt(help="Deployments to show.")] = 8,
    launch: Annotated[bool, Opt("--launch/--no-launch", help="Print launch commands for the best deployment.")] = True,
    plot: Annotated[Path | None, Opt(help="Write the Pareto plot to this .png or .svg.")] = None,
    out: Annotated[Path | None, Opt(help="Write the best deployment as a serving plan.json.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print JSON.")] = False,
) -> None:
    """Plan LLM serving: the best deployment for a model, GPUs and workload (or price one with --estimate)."""
    from meshplan.cli.main import _alone

    if batch is not None or plan is not None:
        _alone("--batch" if batch is not None else "--plan", {
            "--model": model, "--gpu": gpu, "--num-gpus": num_gpus, "--isl": isl, "--osl": osl,
            "--concurrency": concurrency, "--request-rate": request_rate, "--trace": trace,
            "--plan": plan if batch is not None else None})
    if batch is not None:
        if not estimate:
            _fail("--batch needs --estimate (it prices one deployment per line)")
        from meshplan.cli.main import _run_batch

        _run_batch(batch, _estimate_line)
        return
    try:
        if plan is not None:
            _reprice(plan, as_json)
            return
        missing = [f for f, v in [("--model", model), ("--gpu", gpu), ("--isl", isl if isl is not None else isl_hist or trace),
                                  ("--osl", osl if osl is not None else osl_hist or trace)] if v is None]
        if concurrency is None and request_rate is None and trace is None:
            missing.append("--concurrency, --request-rate or --trace")
        if not estimate and num_gpus is None:
            missing.append("--num-gpus")
        if missing:
            raise PlanError(f"missing {', '.join(missing)}; `meshplan serve --help` shows every option")
        if concurrency is not None and request_rate is not None:
            raise PlanError("give --concurrency or --request-rate, not both")
        if concurrency is not None and concurrency <= 0:
            raise PlanError(f"--concurrency {concurrency} must be positive")
        if top_k <= 0:
            raise PlanError(f"--top-k {top_k} must be positive (deployments to show)")
        from meshplan.cli.main import _check_out

        _check_out(out)
        _check_out(plot, "--plot")
        rate = _rate(request_rate)
        gpus = [g.strip() for g in str(gpu).split(",") if g.strip()]
        if estimate:
            fields = {"model": model, "gpu": gpus[0], "num_gpus": num_gpus, "tp": tp, "pp": pp, "ep": ep,
                      "attn_dp": attn_dp, "replicas": replicas, "precision": precision or "bf16", "kv_dtype": kv_dtype,
                      "isl": isl, "osl": osl, "concurrency": concurrency, "request_rate": rate,
                      "prefix_hit": prefix_hit, "length_cv": length_cv, "engine": engine, "max_batch": max_batch,
                      "chunk_tokens": chunk_tokens, "trace": str(trace) if trace else None,
                      "isl_histogram": str(isl_hist) if isl_hist else None,
                      "osl_histogram": str(osl_hist) if osl_hist else None}
            _estimate(fields, as_json, out)
            return
        from meshplan.serve.estimate import ServeRequest, request_workload

        try:
            request = ServeRequest(
                model=str(model), gpu=gpus[0], isl=isl, osl=osl, concurrency=concurrency, request_rate=rate,
                prefix_hit=prefix_hit, length_cv=length_cv, trace=str(trace) if trace else None,
                isl_histogram=str(isl_hist) if isl_hist else None, osl_histogram=str(osl_hist) if osl_hist else None)
        except ValidationError as exc:
            err = exc.errors()[0]
            flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "a flag"
            raise PlanError(f"{flag} {err.get('input')!r}: {err['msg']}; fix that flag") from None
        work = request_workload(request)
        _search(str(model), gpus, num_gpus, work, ttft, tpot, objective,  # type: ignore[arg-type]
                _prices(gpu_hour_price, gpus), precision or "bf16,fp8", engine, max_pp, disagg, top_k, launch, plot,
                out, as_json)
    except PlanError as exc:
        _fail(str(exc))


def _estimate(fields: dict[str, Any], as_json: bool, out: Path | None) -> None:
    from meshplan.cli.render import print_tables
    from meshplan.serve.estimate import estimate_serving

    if "," in str(fields["precision"]):
        raise PlanError(f"--precision {fields['precision']!r}: --estimate prices one precision; give one of bf16, fp16, fp8, fp4")
    result = estimate_serving({k: v for k, v in fields.items() if v is not None})
    if as_json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        print_tables(estimate_tables(result))
    if out is not None:
        _write(result, out, {"how": "meshplan serve --estimate"})


def _write(result: Any, out: Path, search: dict[str, Any]) -> None:
    from meshplan import __version__
    from meshplan.plan import ServingPlan, write_plan
    from meshplan.serve.deployment import Deployment
    from meshplan.serve.launch import hf_id_for, launch_commands
    from meshplan.specs import load_gpu, load_model

    model = load_model(result.model)
    hf_id = hf_id_for(model.name)
    launch = launch_commands(hf_id, result.deployment)
    if result.disagg:  # one set of commands per side; the engines' own disaggregation wiring is not generated
        prefill = Deployment.model_validate(result.disagg["prefill"])
        launch = {**{f"prefill/{k}": v for k, v in launch_commands(hf_id, prefill).items()},
                  **{f"decode/{k}": v for k, v in launch.items()}}
    plan = ServingPlan(meshplan_version=__version__, model=model, gpu=load_gpu(result.gpu),
                       deployment=result.deployment.model_dump(), workload=result.workload.model_dump(mode="json"),
                       engine=result.engine, estimate=result.model_dump(mode="json"), launch=launch, search=search)
    write_plan(plan, out)
    Console(stderr=True).print(f"wrote {escape(str(out))}", highlight=False)


def _reprice(path: Path, as_json: bool) -> None:
    from meshplan.cli.render import print_tables
    from meshplan.plan import read_serving_plan
    from meshplan.serve.estimate import estimate_serving
    from meshplan.serve.workload import ServeWorkload

    p = read_serving_plan(path)
    fields: dict[str, Any] = {"model": p.model.name, "gpu": p.gpu.name, **p.deployment, "engine": p.engine}
    split = p.estimate.get("disagg")
    if split:
        pre, dec = split["prefill"], split["decode"]
        fields = {"model": p.model.name, "gpu": p.gpu.name, "engine": p.engine, "precision": dec["precision"],
                  "kv_dtype": dec["kv_dtype"], "chunk_tokens": dec["chunk_tokens"],
                  "disagg": {"prefill": {"workers": pre["replicas"], "tp": pre["tp"], "pp": pre["pp"]},
                             "decode": {"workers": dec["replicas"], "tp": dec["tp"], "pp": dec["pp"],
                                        "batch": dec["max_batch"]}}}
    result = estimate_serving(fields, workload=ServeWorkload.model_validate(p.workload))
    if as_json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        print_tables(estimate_tables(result))


def _search(model_name: str, gpus: list[str], num_gpus: int, work: Any, ttft: str | None, tpot: str | None,
            objective: str, prices: dict[str, float], precision: str, engine: str, max_pp: int, disagg: bool,
            top_k: int,
            launch: bool, plot: Path | None, out: Path | None, as_json: bool) -> None:
    from meshplan.cli.render import print_tables
    from meshplan.serve.estimate import estimate_serving
    from meshplan.serve.launch import hf_id_for, launch_commands
    from meshplan.serve.search import ServeSearchRequest, search_serving
    from meshplan.serve.workload import LatencyTarget
    from meshplan.specs import load_gpu, load_model

    if objective not in ("throughput", "gpus", "cost"):
        raise PlanError(f"--objective {objective!r} is not one of throughput, gpus, cost")
    if num_gpus <= 0:
        raise PlanError(f"--num-gpus {num_gpus} must be positive")
    if max_pp <= 0:
        raise PlanError(f"--max-pp {max_pp} must be positive (the largest pipeline parallelism to search)")
    precisions = tuple(p.strip() for p in precision.split(","))
    for p in precisions:
        if p not in ("bf16", "fp16", "fp8", "fp4"):
            raise PlanError(f"--precision {p!r} is not one of bf16, fp16, fp8, fp4")
    if engine not in ("vllm", "sglang", "trtllm"):
        raise PlanError(f"--engine {engine!r} is not one of vllm, sglang, trtllm")
    isl, osl, concurrency, rate = work.isl, work.osl, work.concurrency, work.request_rate
    req = ServeSearchRequest(
        model=load_model(model_name), gpus=tuple(load_gpu(g) for g in gpus), num_gpus=num_gpus, workload=work,
        engine=engine, precisions=precisions, ttft=LatencyTarget.parse(ttft, "--ttft") if ttft else None,
        tpot=LatencyTarget.parse(tpot, "--tpot") if tpot else None, objective=objective,  # type: ignore[arg-type]
        gpu_hour_price=prices, max_pp=max_pp, disagg=disagg, top_k=top_k)
    result = search_serving(req)
    best = result.ranked[0] if result.ranked else None
    detail = None
    if best is not None:
        d = best.deployment
        fields = {"model": model_name, "gpu": best.gpu, **d.model_dump(), "engine": engine}
        if best.prefill is not None:
            pre = best.prefill
            fields = {"model": model_name, "gpu": best.gpu, "precision": d.precision, "kv_dtype": d.kv_dtype,
                      "engine": engine, "disagg": {"prefill": {"workers": pre.replicas, "tp": pre.tp},
                                                   "decode": {"workers": d.replicas, "tp": d.tp}}}
        detail = estimate_serving(fields, workload=work)
    if plot is not None:
        from meshplan.serve.plot import plot_pareto

        plot_pareto(result.priced, result.frontier, best, plot,
                    f"{req.model.name} on {num_gpus} x {'/'.join(g.name for g in req.gpus)}, isl {isl} / osl {osl}, "
                    f"{engine}")
    if as_json:
        print(json.dumps({
            "objective": objective, "candidates": result.num_candidates, "fit": result.num_fit,
            "within_targets_by_mean": result.num_meet, "simulated": result.num_simulated, "seconds": result.seconds,
            "ranked": [{"gpu": c.gpu, "deployment": c.deployment.model_dump(), "label": c.label,
                        "prefill": c.prefill.model_dump() if c.prefill else None, "ttft_ms": c.ttft_s * 1e3,
                        "tpot_ms": c.tpot_s * 1e3, "output_tokens_per_s_total": c.output_tokens_per_s,
                        "output_tokens_per_s_per_gpu": c.per_gpu, "output_tokens_per_s_per_user": c.per_user,
                        "num_gpus": c.num_gpus, "cost_per_m_tokens": c.cost_per_m_tokens,
                        "ttft_at_target_pct_ms": None if c.ttft_pct_s is None else c.ttft_pct_s * 1e3,
                        "tpot_at_target_pct_ms": None if c.tpot_pct_s is None else c.tpot_pct_s * 1e3}
                       for c in result.ranked],
            "pareto": [{"gpu": c.gpu, "deployment": c.label, "tok_s_per_gpu": c.per_gpu,
                        "tok_s_per_user": c.per_user} for c in result.pareto],
            "best": detail.model_dump(mode="json") if detail else None,
        }, indent=2))
    else:
        load = f"concurrency {concurrency}" if concurrency else f"{rate:g} req/s"
        targets = ", ".join(t for t in (f"TTFT {ttft}" if ttft else "", f"TPOT {tpot}" if tpot else "") if t)
        title = (f"{req.model.name} on {num_gpus} x {'/'.join(g.name for g in req.gpus)}, isl {isl} osl {osl}, {load}"
                 f"{', ' + targets if targets else ''}: top {len(result.ranked)} by {objective}")
        print_tables([ranked_table(result, title, bool(prices), bool(ttft or tpot)), pareto_table(result.pareto)])
        console = Console(width=120)
        sims = (f", {result.num_simulated} simulated for the percentile targets ({len(result.ranked)} meet them)"
                if result.num_simulated else "")
        console.print(f"{result.num_candidates:,} deployments priced in {result.seconds:.2f} s: {result.num_fit:,} fit "
                      f"and keep up, {result.num_meet:,} within the targets' limits by their means{sims}. TTFT/TPOT: "
                      "steady-state means; p-tile: the targets' percentiles from the scheduler simulation.",
                      highlight=False)
        if detail is not None:
            print_tables(estimate_tables(detail)[:1])
        if launch and best is not None:
            console.print("[bold]launch commands for #1[/bold]")
            for cmd in launch_commands(hf_id_for(req.model.name), best.deployment).values():
                console.print(escape(cmd), highlight=False, soft_wrap=True)
    if out is not None and detail is not None:
        _write(detail, out, {"objective": objective, "rank": 1, "candidates": result.num_candidates})


def is_serving_plan(path: Path) -> bool:
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("kind") == "serving")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def _run_model(name: str | None, tp: int) -> Any:
    """The model the CPU run uses: a small Llama-style decoder sized to tp (default), 'tiny' (a smaller one, for
    tests), or a preset/config."""
    from meshplan.specs import ModelSpec, load_model

    if name == "tiny":
        return ModelSpec(name="tiny-serve", num_layers=2, hidden=256, ffn_hidden=512, num_heads=max(4, tp),
                         num_kv_heads=max(2, tp), head_dim=64, vocab=1024, gated_mlp=True, tied_embeddings=False)
    if name is None:
        heads = max(8, tp)
        return ModelSpec(name="small-serve", num_layers=4, hidden=128 * heads, ffn_hidden=384 * heads,
                         num_heads=heads, num_kv_heads=max(4, tp), head_dim=64, vocab=8192, gated_mlp=True,
                         tied_embeddings=False)
    return load_model(name)


def run_serving_plan(path: Path, *, model: str | None, nproc: int | None, osl: int, isl: int | None,
                     batch: int | None, as_json: bool) -> None:
    """`meshplan run serve-plan.json`: the plan's tensor parallelism on CPU processes (gloo), measured TTFT and
    TPOT of one batch next to the prediction from a profile measured in the same processes."""
    from meshplan.cli.render import print_tables
    from meshplan.plan import read_serving_plan
    from meshplan.run import require_torch
    from meshplan.serve.local import predict_static_batch

    try:
        require_torch()
        plan = read_serving_plan(path)
        tp = nproc if nproc is not None else min(int(plan.deployment["tp"]), 2)
        if tp <= 0:
            raise PlanError(f"--nproc {tp} must be positive")
        if osl < 2:
            raise PlanError(f"--steps {osl} (output tokens in serving mode) must be at least 2")
        from meshplan.run.serving import ServeRunConfig, run_serving

        spec = _run_model(model, tp)
        cfg = ServeRunConfig(model=spec, tp=tp, batch=batch or 4, isl=isl or 128, osl=max(osl, 2))
        result = run_serving(cfg)
    except PlanError as exc:
        _fail(str(exc))
        return
    ttft, tpot = predict_static_batch(spec, tp, cfg.batch, cfg.isl, cfg.osl, result.profile)
    if as_json:
        print(json.dumps({**result.model_dump(mode="json"), "predicted_ttft_s": ttft, "predicted_tpot_s": tpot},
                         indent=2))
        return
    t = Table(title=f"serving run: {spec.name} tp{tp} on {tp} CPU processes (gloo), batch {cfg.batch}, "
                    f"isl {cfg.isl}, osl {cfg.osl}, bf16", title_justify="left")
    for col in ("", "measured", "predicted", "pred/meas"):
        t.add_column(col, justify="right" if col else "left")
    for name, meas, pred in (("TTFT (prefill of the batch)", result.ttft_s, ttft), ("TPOT", result.tpot_s, tpot)):
        t.add_row(name, f"{meas * 1e3:,.1f} ms", f"{pred * 1e3:,.1f} ms", f"{pred / meas:.2f}")
    p = result.profile
    prof = Table(title="measured profile (layer 3: this machine, these processes)", title_justify="left",
                 show_header=False)
    prof.add_column(style="bold")
    prof.add_column(justify="right")
    prof.add_row("bf16 GEMM per process", f"{p['gemm_flops'] / 1e9:,.1f} GFLOP/s")
    prof.add_row("memory copy per process", f"{p['memory_bytes_per_s'] / 1e9:,.2f} GB/s")
    prof.add_row("dispatch per tensor op", f"{p['op_overhead_s'] * 1e6:,.1f} us x {p['ops_per_iteration']:.0f} ops/iteration")
    if tp > 1:
        prof.add_row("all-reduce latency", f"{p['allreduce_latency_s'] * 1e6:,.0f} us")
        prof.add_row("all-reduce bus bandwidth", f"{p['allreduce_bytes_per_s'] / 1e9:,.2f} GB/s")
        prof.add_row("first-token logits vs 1 process", f"max rel diff {result.first_logits_max_rel_diff:.2e}")
    print_tables([t, prof])
    Console(stderr=True).print("timings are noisy when other processes share the CPU", highlight=False)
