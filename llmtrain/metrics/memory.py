"""Memory figures per rank: peak accelerator memory or resident set size, and the peak tensor
allocation of one block of code (what a training step adds on top of weights and states)."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator
from dataclasses import dataclass

import torch


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass
class PeakAllocation:
    bytes: int = 0


@contextlib.contextmanager
def track_peak_allocation(device: torch.device) -> Iterator[PeakAllocation]:
    """Peak bytes of tensors allocated inside the block above what was live when it began.

    CUDA: the caching allocator's own peak counter. CPU has no such counter and the process RSS
    only ever grows, so the allocations are replayed from the profiler's memory events (each
    allocation and free with its size and address, in order; `replay_peak` says why by address and
    when the figure is an upper bound). The profiler slows the block down: use this on an extra,
    untimed step.
    """
    peak = PeakAllocation()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield peak
        torch.cuda.synchronize(device)
        peak.bytes = torch.cuda.max_memory_allocated(device) - start
        return
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        yield peak
    peak.bytes = replay_peak(prof.profiler.kineto_results.experimental_event_tree())


def replay_peak(event_tree: list) -> int:
    """The most bytes live at once, replaying the profiler's allocation events by address.

    The profiler records allocations and frees only on the threads it profiles. A tensor whose last
    reference a gloo worker thread drops (the buffers of a collective that the worker releases after
    the caller's `wait()` returned) is freed unseen: a plain running sum keeps counting it for the
    rest of the block, which made the all-to-alls of sequence parallelism look like a leak growing
    with every layer. An allocation at an address the replay still holds as live proves the earlier
    block was freed, so it is dropped there. Frees never followed by reuse of their address stay
    counted: the figure is an upper bound, exact when every free happens on a profiled thread.
    """
    from torch._C._profiler import _EventType

    allocations, stack = [], list(event_tree)
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            allocations.append(node)
        stack.extend(node.children)
    allocations.sort(key=lambda node: node.start_time_ns)
    live_sizes: dict[int, int] = {}
    live = best = 0
    for node in allocations:
        ptr, size = node.extra_fields.ptr, node.extra_fields.alloc_size  # size < 0 for a free
        if size > 0:
            live -= live_sizes.pop(ptr, 0)  # freed on a thread the profiler does not see
            live_sizes[ptr] = size
        elif ptr in live_sizes:
            live_sizes.pop(ptr)
        # else: a block allocated before the block began; what was live then is not counted, but
        # the running sum still falls so that later peaks are measured from the same baseline.
        live += size
        best = max(best, live)
    return best
