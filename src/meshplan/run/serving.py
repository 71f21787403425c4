"""Serving mode of `meshplan run`: a small decoder with tensor parallelism over gloo CPU processes, prefill of
a batch of prompts then greedy decode with a KV cache; measured TTFT and TPOT, next to the serving cost model's
prediction from a hardware profile measured in the same processes (layer 3 of hardware knowledge).

Each rank holds a Megatron-style shard (Narayanan et al. 2021, §3.2): query/key/value heads and the gate/up
rows column-parallel, the attention output and down projection row-parallel, one all-reduce after each;
embedding and LM head replicated. Weights come from one seeded generator, so every world size holds slices of
the same model and the first token's logits match the single-process run (checked).
Processes start with torch.multiprocessing (spawn); torch is imported only here.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from meshplan.errors import PlanError
from meshplan.specs.base import Frozen
from meshplan.specs.model import ModelSpec

# Tensor ops `_forward` dispatches per layer (norms 2x4, projections 3 + 3 views/transposes, cache 2 cats,
# 2 repeat_interleave, attention 1, output 3, residual 2, MLP 5, all-reduces 2) and outside the layers
# (embedding, final norm, LM head, argmax): counted by hand in `_forward`, for the dispatch-overhead term.
OPS_PER_LAYER = 31
OPS_OUTSIDE_LAYERS = 8


class ServeRunConfig(Frozen):
    """One serving run on CPU processes."""

    model: ModelSpec
    tp: int = Field(gt=0)
    batch: int = Field(default=4, gt=0)
    """Requests prefilled together and then decoded together."""
    isl: int = Field(default=128, gt=0)
    osl: int = Field(default=16, gt=1)
    seed: int = 0
    timeout_s: float = Field(default=300.0, gt=0)


class ServeRunResult(Frozen):
    config: ServeRunConfig
    world_size: int
    torch: str
    ttft_s: float
    """Prefill of the whole batch until the first tokens (median of the repeats)."""
    tpot_s: float
    """Median decode step after the first token."""
    profile: dict[str, float]
    """Measured in the ranks while they share the machine: GEMM FLOP/s and memory bytes/s per rank, all-reduce
    latency (s) and bandwidth (bytes/s)."""
    first_logits_max_rel_diff: float | None = None
    """Largest relative difference of the first token's logits against one process (None when tp = 1)."""


def _shards(model: ModelSpec, tp: int, rank: int, seed: int) -> dict[str, Any]:
    import torch

    if model.num_heads % tp or model.num_kv_heads % tp or model.ffn_hidden % tp:
        raise PlanError(f"tp={tp} must divide heads {model.num_heads}, KV heads {model.num_kv_heads} and ffn "
                        f"{model.ffn_hidden} of the run model; choose another --nproc")
    g = torch.Generator().manual_seed(seed)
    h, hd, ffn = model.hidden, model.head_dim, model.ffn_hidden
    std = 0.02  # normal init (GPT-2 / Llama)

    def full(*shape: int) -> Any:
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

    q_rows, kv_rows = model.num_heads * hd // tp, model.num_kv_heads * hd // tp
    layers = []
    for _ in range(model.num_layers):
        wq, wk, wv = full(model.num_heads * hd, h), full(model.num_kv_heads * hd, h), full(model.num_kv_heads * hd, h)
        wo, wg, wu, wd = full(h, model.num_heads * hd), full(ffn, h), full(ffn, h), full(h, ffn)
        f = ffn // tp
        layers.append({
            "wq": wq[rank * q_rows:(rank + 1) * q_rows], "wk": wk[rank * kv_rows:(rank + 1) * kv_rows],
            "wv": wv[rank * kv_rows:(rank + 1) * kv_rows], "wo": wo[:, rank * q_rows:(rank + 1) * q_rows],
            "wg": wg[rank * f:(rank + 1) * f], "wu": wu[rank * f:(rank + 1) * f], "wd": wd[:, rank * f:(rank + 1) * f],
        })
    return {"emb": full(model.vocab, h), "head": full(model.vocab, h), "layers": layers}


def _rms(x: Any) -> Any:
    import torch

    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)


def _forward(model: ModelSpec, w: dict[str, Any], tokens: Any, cache: list[dict[str, Any]], start: int,
             tp: int, group: Any) -> Any:
    """Logits of the last position; appends keys/values to `cache` (positions start..)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    b, s = tokens.shape
    hd = model.head_dim
    heads, kv_heads = model.num_heads // tp, model.num_kv_heads // tp
    x = w["emb"][tokens]
    for layer, c in zip(w["layers"], cache, strict=True):
        y = _rms(x)
        q = (y @ layer["wq"].T).view(b, s, heads, hd).transpose(1, 2)
        k = (y @ layer["wk"].T).view(b, s, kv_heads, hd).transpose(1, 2)
        v = (y @ layer["wv"].T).view(b, s, kv_heads, hd).transpose(1, 2)
        c["k"] = k if c.get("k") is None else torch.cat([c["k"], k], dim=2)
        c["v"] = v if c.get("v") is None else torch.cat([c["v"], v], dim=2)
        rep = heads // kv_heads
        kk, vv = c["k"].repeat_interleave(rep, dim=1), c["v"].repeat_interleave(rep, dim=1)
        attn = F.scaled_dot_product_attention(q, kk, vv, is_causal=(start == 0 and s > 1))
        out = attn.transpose(1, 2).reshape(b, s, heads * hd) @ layer["wo"].T
        if tp > 1:
            dist.all_reduce(out, group=group)
        x = x + out
        y = _rms(x)
        mlp = (F.silu(y @ layer["wg"].T) * (y @ layer["wu"].T)) @ layer["wd"].T
        if tp > 1:
            dist.all_reduce(mlp, group=group)
        x = x + mlp
    return (_rms(x[:, -1]) @ w["head"].T).float()


def _profile(model: ModelSpec, cfg: ServeRunConfig, world: int) -> dict[str, float]:
    """GEMM FLOP/s and memory bandwidth of this rank while all ranks run the same probes, and the all-reduce α
    and bandwidth (Thakur et al. 2005 α-β: time(B) = α + B·β)."""
    import torch
    import torch.distributed as dist

    def timed(fn: Any, repeat: int = 5) -> float:
        fn()
        if world > 1:
            dist.barrier()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    m, k, n = cfg.batch * cfg.isl, model.hidden, model.ffn_hidden // world
    a, bm = torch.randn(m, k).to(torch.bfloat16), torch.randn(k, n).to(torch.bfloat16)
    gemm = 2.0 * m * k * n / timed(lambda: a @ bm)  # FLOP/s
    src = torch.empty(16 * 2**20, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    stream = 2.0 * src.numel() * 2 / timed(lambda: dst.copy_(src))  # bytes/s, read + write
    tiny = torch.zeros(8, dtype=torch.bfloat16)

    def ops() -> None:  # framework dispatch cost of one small tensor op
        for _ in range(200):
            tiny.add_(1)

    op_s = timed(ops) / 200
    out = {"gemm_flops": gemm, "memory_bytes_per_s": stream, "allreduce_latency_s": 0.0,
           "allreduce_bytes_per_s": math.inf, "op_overhead_s": op_s,
           "ops_per_iteration": float(OPS_PER_LAYER * model.num_layers + OPS_OUTSIDE_LAYERS)}
    if world > 1:
        small, big = torch.zeros(8), torch.zeros(2**20)
        def many_small() -> None:  # back to back: rank skew amortised over the loop
            for _ in range(20):
                dist.all_reduce(small)

        lat = timed(many_small, 5) / 20
        t_big = timed(lambda: dist.all_reduce(big), 5)
        nbytes = big.numel() * 4
        out["allreduce_latency_s"] = lat
        out["allreduce_bytes_per_s"] = 2.0 * (world - 1) / world * nbytes / max(t_big - lat, 1e-9)
    return out


def _worker(rank: int, world: int, cfg_json: str, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    cfg = ServeRunConfig.model_validate_json(cfg_json)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}",
                                timeout=__import__("datetime").timedelta(seconds=cfg.timeout_s))
    try:
        model = cfg.model
        w = _shards(model, world, rank, cfg.seed)
        prompts = torch.randint(0, model.vocab, (cfg.batch, cfg.isl), generator=torch.Generator().manual_seed(cfg.seed + 1))
        profile = _profile(model, cfg, world)
        ttfts, steps, first = [], [], None
        with torch.no_grad():
            for repeat in range(3):  # the first repeat warms up
                cache: list[dict[str, Any]] = [{} for _ in range(model.num_layers)]
                if world > 1:
                    dist.barrier()
                t = time.perf_counter()
                logits = _forward(model, w, prompts, cache, 0, world, None)
                token = logits.argmax(-1, keepdim=True)
                ttft = time.perf_counter() - t
                if repeat == 0:
                    first = logits
                    continue
                ttfts.append(ttft)
                for i in range(cfg.osl - 1):
                    t = time.perf_counter()
                    logits = _forward(model, w, token, cache, cfg.isl + i, world, None)
                    token = logits.argmax(-1, keepdim=True)
                    steps.append(time.perf_counter() - t)
        if rank == 0:
            assert first is not None
            torch.save(first, Path(out) / "first_logits.pt")
            Path(out, "result.json").write_text(json.dumps({
                "ttft_s": sorted(ttfts)[len(ttfts) // 2], "tpot_s": sorted(steps)[len(steps) // 2],
                "profile": profile, "torch": torch.__version__}))
    finally:
        if world > 1:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(cfg: ServeRunConfig, world: int, out: Path) -> dict[str, Any]:
    import torch.multiprocessing as mp

    try:
        mp.start_processes(_worker, args=(world, cfg.model_dump_json(), _free_port(), str(out)), nprocs=world,
                           join=True, start_method="spawn")
    except mp.ProcessRaisedException as exc:
        raise PlanError(f"serving run failed on a rank: {str(exc).strip().splitlines()[-1]}") from None
    return dict(json.loads((out / "result.json").read_text()))


def run_serving(cfg: ServeRunConfig) -> ServeRunResult:
    """Run the batch on `cfg.tp` CPU processes (and on one, for the logits check when tp > 1)."""
    import torch

    with tempfile.TemporaryDirectory(prefix="meshplan-serve-") as tmp:
        main = Path(tmp) / "tp"
        main.mkdir()
        result = _launch(cfg, cfg.tp, main)
        diff = None
        if cfg.tp > 1:
            ref_dir = Path(tmp) / "ref"
            ref_dir.mkdir()
            _launch(cfg.model_copy(update={"osl": 2}), 1, ref_dir)
            a, b = torch.load(main / "first_logits.pt"), torch.load(ref_dir / "first_logits.pt")
            diff = float(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item())
    return ServeRunResult(config=cfg, world_size=cfg.tp, torch=result["torch"], ttft_s=result["ttft_s"],
                          tpot_s=result["tpot_s"], profile=result["profile"], first_logits_max_rel_diff=diff)
