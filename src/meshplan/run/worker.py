"""One rank of a distributed run: `python -m meshplan.run.worker CONFIG.json OUT_DIR` under torchrun.

Builds the decoder with the run's seed, applies the strategy, trains `steps` optimizer steps on seeded
synthetic data, and writes per-rank step times, peak memory and losses; rank 0 gathers them into
OUT_DIR/result.json. A failing rank writes OUT_DIR/rank<r>.error before it exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from meshplan.run.config import RunConfig
from meshplan.run.memory import cpu_step_peak_bytes, resident_bytes, tensor_bytes
from meshplan.run.model import build_model
from meshplan.run.parallel import (
    allreduce_gradients,
    apply_checkpointing,
    apply_data_parallel,
    apply_tensor_parallel,
    build_mesh,
    check_runnable,
    stage_modules,
)


def batch(cfg: RunConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole global batch of `step`: seeded random tokens, inputs and next-token targets."""
    g = torch.Generator().manual_seed(cfg.seed * 100003 + step)
    tokens = torch.randint(cfg.model.vocab, (cfg.global_batch, cfg.seq_len + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits split over the vocabulary (a DTensor) need `loss_context`."""
    return F.cross_entropy(logits.float().flatten(0, 1), target.flatten())


def loss_context(tp: int) -> contextlib.AbstractContextManager[None]:
    """PyTorch's vocab-parallel cross-entropy for the forward and backward of a tensor-parallel step: each rank
    keeps s·b·v/tp logits, as Megatron's (Korthikanti et al. 2022, §4.1) and as the cost model prices them."""
    if tp == 1:
        return contextlib.nullcontext()
    from torch.distributed.tensor.parallel import loss_parallel

    return loss_parallel()


def _local(t: torch.Tensor) -> torch.Tensor:
    """A replicated DTensor's value as a plain tensor (a plain tensor as it is)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def reference_run(cfg: RunConfig) -> tuple[list[float], list[float]]:
    """The same model, seed and data on one process, no parallelism: (losses, gradient norms) per step.

    Gradient norms make the parity check sensitive to gradient scale, which AdamW's update hides."""
    model = build_model(cfg.model, cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, foreach=False)
    losses, norms = [], []
    for step in range(cfg.steps):
        x, y = batch(cfg, step)
        loss = loss_fn(model(x), y)
        loss.backward()
        squares = [p.grad.double().pow(2).sum() for p in model.parameters() if p.grad is not None]
        norms.append(float(torch.stack(squares).sum().sqrt()))
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses, norms


def _grad_norm(params: list[torch.nn.Parameter], pp_group: Any) -> float:
    """Global gradient norm: full gradients (DTensor shards gathered) of this rank's stage, summed over stages."""
    sq = torch.zeros((), dtype=torch.float64)
    for p in params:
        if p.grad is None:
            continue
        g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        sq += g.detach().double().pow(2).sum().cpu()
    dist.all_reduce(sq, group=pp_group)
    return float(sq.sqrt())


def _progress(out: Path, rank: int, what: str) -> None:
    (out / f"rank{rank}.progress").write_text(what)


def run_rank(cfg: RunConfig, out: Path) -> dict[str, Any]:
    s = cfg.strategy
    rank = dist.get_rank()
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    check_runnable(cfg.model, s, cfg.global_batch, cfg.seq_len, cfg.stage_layers, cfg.layer_recompute)
    # Fresh process groups for every config of a batch: a message a pipeline schedule leaves in flight at the end
    # of one config must not be read by the next config's collective on the same pair of ranks.
    mesh = build_mesh(s, device.type)
    pp_rank, dp_rank = mesh["pp"].get_local_rank(), mesh["dp"].get_local_rank()
    model = build_model(cfg.model, cfg.seed).to(device)
    stages = stage_modules(model, s, pp_rank, cfg.stage_layers) if s.pp > 1 else [(0, model)]
    del model
    modules = []
    for _, module in stages:
        if s.tp > 1 and cfg.module_plan is not None:  # a layout chosen per operator by `meshplan shard`
            from meshplan.shard.apply import apply_module_plan

            apply_module_plan(module, mesh["tp"], cfg.module_plan)
        elif s.tp > 1:
            apply_tensor_parallel(module, mesh["tp"], s.sequence_parallel)
        apply_checkpointing(module, s.recompute, cfg.layer_recompute)
        modules.append(apply_data_parallel(module, s, mesh))
    params = [p for dp in modules for p in dp.module.parameters()]
    has_dtensor = any(hasattr(p, "to_local") for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, foreach=False if has_dtensor else None)
    local_batch = cfg.global_batch // s.dp
    microbatches = local_batch // s.micro_batch

    schedule: Any = None  # a torch.distributed.pipelining schedule
    if s.pp > 1:
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

        num_stages = s.pp * s.vpp
        pipe: list[Any] = [PipelineStage(dp.module, index, num_stages, device, group=mesh["pp"].get_group())
                for (index, _), dp in zip(stages, modules)]
        if s.schedule == "interleaved":
            schedule = ScheduleInterleaved1F1B(pipe, n_microbatches=microbatches, loss_fn=loss_fn)
        else:
            cls = Schedule1F1B if s.schedule == "1f1b" else ScheduleGPipe
            schedule = cls(pipe[0], n_microbatches=microbatches, loss_fn=loss_fn)
    first = any(index == 0 for index, _ in stages)
    last = any(index == s.pp * s.vpp - 1 for index, _ in stages)

    def local_batch_of(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch(cfg, step)
        return (x[dp_rank * local_batch:(dp_rank + 1) * local_batch].to(device),
                y[dp_rank * local_batch:(dp_rank + 1) * local_batch].to(device))

    def train_step(step: int, x: torch.Tensor, y: torch.Tensor) -> float:
        if cfg.fault is not None and cfg.fault.rank == rank and cfg.fault.step == step:
            if cfg.fault.kind == "raise":
                raise RuntimeError(f"injected fault on rank {rank} at step {step}")
            time.sleep(10 * cfg.timeout_s)  # hang: the others time out in their next collective
        total = torch.zeros((), device=device)
        if schedule is None:
            module = modules[0].module
            for i in range(microbatches):
                sl = slice(i * s.micro_batch, (i + 1) * s.micro_batch)
                with loss_context(s.tp):
                    loss = loss_fn(module(x[sl]), y[sl]) / microbatches
                    loss.backward()
                total += _local(loss.detach())
        else:
            losses: list[torch.Tensor] = []
            with loss_context(s.tp):
                if first and last:
                    schedule.step(x, target=y, losses=losses, return_outputs=False)
                elif first:
                    schedule.step(x)
                elif last:
                    schedule.step(target=y, losses=losses, return_outputs=False)
                else:
                    schedule.step()
            if last:
                total = torch.stack([_local(mb_loss.detach()) for mb_loss in losses]).mean()
            dist.all_reduce(total, group=mesh["pp"].get_group())  # only the last stage contributes
        if modules[0].kind == "allreduce":
            allreduce_gradients(params, mesh)
        if step < cfg.steps and cfg.check_parity:  # not the extra, memory-profiled step
            started = time.perf_counter()
            grad_norms.append(_grad_norm(params, mesh["pp"].get_group()))
            norm_seconds.append(time.perf_counter() - started)  # left out of the step time
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dist.all_reduce(total, group=mesh["dp"].get_group())
        return float(total) / s.dp

    step_times: list[float] = []
    step_losses: list[float] = []
    grad_norms: list[float] = []
    norm_seconds: list[float] = []
    for step in range(cfg.steps):
        _progress(out, rank, f"step {step}")
        x, y = local_batch_of(step)  # data is made before the clock starts
        dist.barrier()
        started = time.perf_counter()
        step_losses.append(train_step(step, x, y))
        if use_cuda:
            torch.cuda.synchronize()
        step_times.append(time.perf_counter() - started - (norm_seconds[-1] if cfg.check_parity else 0.0))
    memory: dict[str, Any] = {}
    if cfg.measure_memory:
        if use_cuda:
            memory = {"peak_bytes": int(torch.cuda.max_memory_allocated(device)), "method": "torch.cuda.max_memory_allocated"}
        else:
            # DDP's buckets hold the gradients (as views) from the wrap on: resident, not allocated in the step
            buckets = tensor_bytes([p for p in params if p.requires_grad]) if modules[0].kind == "ddp" else 0
            resident = resident_bytes(params, optimizer) + buckets
            dist.barrier()
            x, y = local_batch_of(cfg.steps)
            live = cpu_step_peak_bytes(lambda: train_step(cfg.steps, x, y))
            memory = {"peak_bytes": resident + live, "resident_bytes": resident, "step_live_peak_bytes": live,
                      "method": "torch.profiler live-allocation peak of one step + parameters, optimizer states"
                                " and DDP's gradient buckets"}
    timed = step_times[cfg.warmup:] or step_times
    _progress(out, rank, "done")
    return {"rank": rank, "coords": {"pp": pp_rank, "dp": dp_rank, "tp": mesh["tp"].get_local_rank()},
            "step_times_s": step_times, "median_step_time_s": statistics.median(timed), "losses": step_losses, "grad_norms": grad_norms,
            "memory": memory}


def main(argv: list[str], teardown: bool = True) -> int:
    """Run the config (or the list of configs, one after another in the same process group) in argv[0]; without
    `teardown` the process group is left for the process's exit to drop (see the entry point below)."""
    raw = json.loads(Path(argv[0]).read_text())
    configs = [RunConfig.model_validate(c) for c in (raw if isinstance(raw, list) else [raw])]
    out = Path(argv[1])
    rank = int(os.environ.get("RANK", "0"))
    try:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=max(c.timeout_s for c in configs)))
        for i, cfg in enumerate(configs):
            dist.barrier()
            result = run_rank(cfg, out)
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, result)
            if rank == 0:
                payload = {"ranks": gathered, "backend": backend, "world_size": dist.get_world_size(),
                           "torch": torch.__version__}
                (out / f"result-{i}.json").write_text(json.dumps(payload))
        if teardown:
            dist.destroy_process_group()
        return 0
    except BaseException as exc:  # report which rank failed and why, then fail the launch
        first_line = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        (out / f"rank{rank}.error").write_text(f"{time.time():.6f}\n{first_line}\n{traceback.format_exc()}")
        return 1


if __name__ == "__main__":
    # A launched worker leaves at once, without tearing the process group down or finalising the interpreter: there
    # a rank now and then aborted with "terminate called without an active exception" (a C++ thread still joinable
    # when destroyed) after every result was written and every rank had reported done (caught with
    # MESHPLAN_RUN_STDERR in about one launch in 20-40 on a 2-core machine); the OS frees the sockets.
    code = main(sys.argv[1:], teardown=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
