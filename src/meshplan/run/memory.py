"""Peak memory per rank: `torch.cuda.max_memory_allocated` on GPU; on CPU the profiler's live-allocation peak
over one step plus what is resident before it (parameters, optimizer states)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    records, keyed by address: a block counts from its allocation until its free, or until its address is handed
    out again — a tensor released on a communication thread (gloo's copies of a collective's input) leaves no free
    record on the profiled thread, and a running sum of the records would keep it alive to the end of the step.
    Frees of blocks allocated before the step are not counted (they are in the resident bytes)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    roots = prof.profiler.kineto_results.experimental_event_tree() if prof.profiler is not None else []
    records = sorted(_allocations(roots))
    live: dict[int, int] = {}
    total = peak = 0
    for _, address, nbytes in records:  # bytes: allocations positive, frees negative
        if nbytes > 0:
            total += nbytes - live.get(address, 0)
            live[address] = nbytes
        else:
            total -= live.pop(address, 0)
        peak = max(peak, total)
    return int(peak)


def _allocations(roots: list[Any]) -> list[tuple[int, int, int]]:
    """(time ns, address, bytes) of every allocation and free in the profiler's event tree."""
    out, todo = [], list(roots)
    while todo:
        node = todo.pop()
        fields = node.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation":
            out.append((node.start_time_ns, int(fields.ptr), int(fields.alloc_size)))
        todo.extend(node.children)
    return out
