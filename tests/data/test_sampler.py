from __future__ import annotations

import itertools

import pytest

from llmtrain.data.errors import DataError
from llmtrain.data.sampler import GlobalBatchSampler


def take(sampler: GlobalBatchSampler, n: int) -> list[list[int]]:
    return list(itertools.islice(iter(sampler), n))


def test_order_is_deterministic_per_seed():
    a = take(GlobalBatchSampler(100, 8, 4, 0, 1, seed=7), 30)
    assert a == take(GlobalBatchSampler(100, 8, 4, 0, 1, seed=7), 30)
    assert a != take(GlobalBatchSampler(100, 8, 4, 0, 1, seed=8), 30)


def test_each_epoch_covers_every_index_once_except_the_dropped_remainder():
    sampler = GlobalBatchSampler(101, 8, 4, 0, 1, seed=3)
    assert (sampler.steps_per_epoch, sampler.dropped_per_epoch) == (12, 5)
    for epoch in range(3):
        steps = range(epoch * 12, (epoch + 1) * 12)
        seen = [i for s in steps for mb in sampler.indices_for_step(s) for i in mb]
        assert len(seen) == len(set(seen)) == 96
        assert set(seen) <= set(range(101))
    first = {i for s in range(12) for mb in sampler.indices_for_step(s) for i in mb}
    second = {i for s in range(12, 24) for mb in sampler.indices_for_step(s) for i in mb}
    assert first != second  # a new permutation each epoch


def test_resume_from_start_step_continues_the_uninterrupted_order():
    full = take(GlobalBatchSampler(50, 8, 2, 1, 2, seed=5), 4 * 2 * 20)  # 2 micro-batches per step
    for start in (0, 3, 6, 7, 13):
        resumed = take(GlobalBatchSampler(50, 8, 2, 1, 2, seed=5, start_step=start), 10)
        assert resumed == full[start * 2 : start * 2 + 10]


@pytest.mark.parametrize("micro", [1, 2])
def test_each_step_trains_the_same_samples_at_any_world_size(micro):
    steps = range(0, 40)  # several epochs of 64 samples with global batch 8

    def per_step(dp_size: int) -> list[list[int]]:
        ranks = [GlobalBatchSampler(64, 8, micro, r, dp_size, seed=11) for r in range(dp_size)]
        return [[i for r in ranks for mb in r.indices_for_step(s) for i in mb] for s in steps]

    one = per_step(1)
    assert per_step(2) == one
    assert per_step(4) == one


def test_ranks_take_contiguous_slices_split_into_micro_batches_in_order():
    full = GlobalBatchSampler(40, 8, 8, 0, 1, seed=0).global_batch(2).tolist()
    assert GlobalBatchSampler(40, 8, 2, 1, 2, seed=0).indices_for_step(2) == [full[4:6], full[6:8]]


def test_too_few_samples_for_one_global_batch_names_the_key_and_count():
    with pytest.raises(DataError, match=r"trainer\.global_batch_size=32 exceeds the 10 training samples"):
        GlobalBatchSampler(10, 32, 4, 0, 1, seed=0)


def test_indivisible_batch_sizes_are_rejected_with_the_keys():
    with pytest.raises(DataError, match=r"global_batch_size=10 is not divisible by the data-parallel size 4"):
        GlobalBatchSampler(100, 10, 1, 0, 4, seed=0)
    with pytest.raises(
        DataError, match=r"= 4 samples per rank, not a multiple of trainer\.micro_batch_size=3"
    ):
        GlobalBatchSampler(100, 8, 3, 0, 2, seed=0)
