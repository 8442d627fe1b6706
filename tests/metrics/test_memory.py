"""The CPU peak-allocation tracker sees temporaries that are freed before the block ends."""

import torch

from llmtrain.metrics.memory import track_peak_allocation


def test_peak_counts_a_freed_temporary_and_ignores_tensors_allocated_before():
    before = torch.zeros(4_000_000)  # live before the block: not counted
    with track_peak_allocation(torch.device("cpu")) as peak:
        tmp = torch.ones(1_000_000)  # 4 MB, freed inside the block
        del tmp
        kept = torch.ones(250_000)  # 1 MB, still live at the end
    assert 4_000_000 <= peak.bytes < 4_000_000 + 1_000_000 + 4096
    assert before.numel() and kept.numel()


def _allocation(ptr: int, size: int, time_ns: int):
    from types import SimpleNamespace

    from torch._C._profiler import _EventType

    fields = SimpleNamespace(ptr=ptr, alloc_size=size)
    return SimpleNamespace(tag=_EventType.Allocation, extra_fields=fields, start_time_ns=time_ns, children=[])


def test_replay_drops_a_block_freed_on_an_unprofiled_thread_when_its_address_is_reused():
    from llmtrain.metrics.memory import replay_peak

    # A collective's buffer at 0x10 freed by a gloo worker (no free event), twice over: a plain
    # running sum would reach 3 MiB; the memory really live never exceeds 1 MiB + 1 MiB.
    mib = 2**20
    events = [_allocation(0x10, mib, 1), _allocation(0x10, mib, 2), _allocation(0x20, mib, 3),
              _allocation(0x10, mib, 4), _allocation(0x20, -mib, 5)]  # fmt: skip
    assert replay_peak(events) == 2 * mib
