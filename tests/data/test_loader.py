from __future__ import annotations

import itertools

import pytest

from llmtrain.config import DataConfig
from llmtrain.data.loader import build_train_loader, build_val_loader
from llmtrain.data.sampler import GlobalBatchSampler


@pytest.fixture
def shards(make_shards):
    return make_shards([f"document {i} " * (1 + i % 5) for i in range(300)], val_fraction=0.2)


def test_train_loader_yields_the_samplers_micro_batches(shards):
    cfg = DataConfig(seq_len=16, loader_workers=0)
    loader = build_train_loader(cfg, shards, 8, 2, dp_rank=1, dp_size=2, seed=3, start_step=5)
    n = len(loader.dataset)
    expected = list(itertools.islice(iter(GlobalBatchSampler(n, 8, 2, 1, 2, 3, start_step=5)), 6))
    got = list(itertools.islice(iter(loader), 6))
    assert [b["sample_index"].tolist() for b in got] == expected
    assert got[0]["input_ids"].shape == got[0]["labels"].shape == (2, 16)


def test_worker_processes_give_the_same_batches_as_in_process(shards):
    def first(workers: int) -> list:
        cfg = DataConfig(seq_len=16, loader_workers=workers, prefetch_factor=2)
        loader = build_train_loader(cfg, shards, 4, 2, 0, 1, seed=0, start_step=0)
        return [b["input_ids"].tolist() for b in itertools.islice(iter(loader), 5)]

    assert first(2) == first(0)


def test_val_loader_gives_equal_disjoint_shares_of_a_world_size_independent_set(shards):
    cfg = DataConfig(seq_len=16)
    shares = [build_val_loader(cfg, shards, 2, rank, 2, num_samples=12) for rank in range(2)]
    assert [len(s) for s in shares] == [3, 3]
    seen = [i for s in shares for b in s for i in b["sample_index"].tolist()]
    assert seen == list(range(12))  # the first 12 windows, in order, split over the ranks
    alone = build_val_loader(cfg, shards, 2, 0, 1, num_samples=12)
    assert [i for b in alone for i in b["sample_index"].tolist()] == seen  # same set on one rank
    everything = build_val_loader(cfg, shards, 4, 0, 1, num_samples=10_000)
    assert sum(len(b["sample_index"]) for b in everything) == len(everything.dataset)


@pytest.mark.parametrize("dp_size", [1, 2])
def test_trainer_validation_set_does_not_depend_on_the_micro_batch_size(shards, dp_size):
    from types import SimpleNamespace

    from llmtrain.config import TrainConfig
    from llmtrain.train.setup import build_loaders

    def evaluated(micro: int) -> list[int]:
        cfg = TrainConfig()
        cfg.data = DataConfig(seq_len=16)
        cfg.trainer.global_batch_size, cfg.trainer.micro_batch_size, cfg.trainer.eval_batches = 8, micro, 2
        seen = []
        for rank in range(dp_size):
            _, val = build_loaders(cfg, shards, SimpleNamespace(dp_rank=rank, dp_size=dp_size), 0)
            seen += [i for b in val for i in b["sample_index"].tolist()]
        return seen

    assert evaluated(1) == evaluated(2) == evaluated(4) == list(range(16))  # 2 global batches of 8
