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
    """Peak of bytes allocated (and not yet freed) during one call of `step`, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.time_range.start, e.cpu_memory_usage) for e in prof.events() if e.name == "[memory]")
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return int(peak)
