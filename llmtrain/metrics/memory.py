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
    allocation and free with its size, in order). The profiler slows the block down: use this on
    an extra, untimed step.
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
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()  # negative for a free
        peak.bytes = max(peak.bytes, live)
