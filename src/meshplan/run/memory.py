"""Peak memory per rank: `torch.cuda.max_memory_allocated` on GPU; on CPU the profiler's live-allocation peak
over one step plus what is resident before it (parameters, optimizer states)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def resident_bytes(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> int:
    """Parameters and optimizer states that live across steps (local shards under TP/FSDP)."""
    states = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return tensor_bytes(list(params)) + tensor_bytes(states)


def cpu_step_peak_bytes(step: Callable[[], object]) -> int:
    """Peak of bytes allocated (and not yet freed) during one call of `step`, from the profiler's allocation
    records. They are read from the Kineto results: the `[memory]` rows of `prof.events()` keep only the
    allocations no operator claimed (3 of 42 for a two-layer MLP step), which would put the peak near zero."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    records = prof.profiler.kineto_results.events() if prof.profiler is not None else []
    events = sorted((e.start_ns(), e.nbytes()) for e in records if e.name() == "[memory]")
    live = peak = 0
    for _, delta in events:  # allocations positive, frees negative, bytes
        live += delta
        peak = max(peak, live)
    return int(peak)
