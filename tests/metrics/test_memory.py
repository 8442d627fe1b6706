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
