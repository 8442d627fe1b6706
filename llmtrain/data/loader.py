"""DataLoaders for the training loop: prepared samples → this rank's micro-batches."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from llmtrain.config import DataConfig
from llmtrain.data import samples
from llmtrain.data.sampler import GlobalBatchSampler


def build_train_loader(
    cfg: DataConfig,
    shards_dir: Path,
    global_batch_size: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    seed: int,
    start_step: int,
) -> DataLoader:
    """An endless loader of this rank's micro-batches, starting with the first of `start_step`.

    Each step is `global_batch_size / (micro_batch_size * dp_size)` consecutive micro-batches.
    """
    windows, collate_fn = samples(cfg, shards_dir, "train")
    sampler = GlobalBatchSampler(
        len(windows), global_batch_size, micro_batch_size, dp_rank, dp_size, seed, start_step
    )
    workers = cfg.loader_workers
    return DataLoader(
        windows,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=workers,
        prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def build_val_loader(
    cfg: DataConfig,
    shards_dir: Path,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    num_samples: int,
) -> DataLoader:
    """This rank's share of the first `num_samples` validation windows, in micro-batches.

    The evaluated set is the first `num_samples` windows (all of them if fewer): it depends on
    neither the world size nor the micro-batch size, so validation losses compare across runs on
    different rank counts and batch splits (the trainer asks for `trainer.eval_batches` global
    batches). It is split into equal contiguous shares so every rank runs the same number of
    batches; the few windows that do not divide evenly over ranks are left out. Loaded in this
    process: reads are small and a fresh worker pool at every evaluation would cost more than it saves.
    """
    windows, collate_fn = samples(cfg, shards_dir, "val")
    budget = min(len(windows), num_samples)
    share = budget // dp_size
    mine = list(range(dp_rank * share, (dp_rank + 1) * share))
    batches = [mine[i : i + micro_batch_size] for i in range(0, share, micro_batch_size)]
    return DataLoader(
        windows, batch_sampler=batches, collate_fn=collate_fn, pin_memory=torch.cuda.is_available()
    )
