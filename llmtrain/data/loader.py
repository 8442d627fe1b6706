"""DataLoaders for the training loop: prepared samples → this rank's micro-batches."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from llmtrain.config import DataConfig
from llmtrain.data import samples
from llmtrain.data.collate import collate
from llmtrain.data.mixture_sampler import MixtureSampler
from llmtrain.data.pretrain.mixture import WindowSubset, mixture_train, mixture_val, source_windows
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
    if cfg.sources:
        windows, sources = mixture_train(cfg, shards_dir)
        collate_fn = collate
        sampler: GlobalBatchSampler = MixtureSampler(
            sources,
            global_batch_size,
            micro_batch_size,
            dp_rank,
            dp_size,
            seed,
            start_step,
            cfg.mixture_block_steps,
        )
    else:
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
    if cfg.sources:  # the budget shared among the sources by weight
        windows, collate_fn = mixture_val(cfg, shards_dir, num_samples), collate
    else:
        windows, collate_fn = samples(cfg, shards_dir, "val")
    return _val_loader(windows, collate_fn, micro_batch_size, dp_rank, dp_size, num_samples)


def build_source_val_loaders(
    cfg: DataConfig, shards_dir: Path, micro_batch_size: int, dp_rank: int, dp_size: int, num_samples: int
) -> dict[str, DataLoader]:
    """Per source of a mixture, a validation loader over its own first `num_samples` windows (as
    `build_val_loader`); empty without `data.sources`."""
    if not cfg.sources:
        return {}
    return {
        name: _val_loader(
            WindowSubset(w, min(len(w), num_samples)),
            collate,
            micro_batch_size,
            dp_rank,
            dp_size,
            num_samples,
        )
        for name, w in source_windows(cfg, shards_dir, "val").items()
    }


def windows_by_source(loader: DataLoader, step: int) -> dict[str, int]:
    """Training windows drawn from each source in steps [0, step) (all ranks); {} for one corpus."""
    sampler = loader.batch_sampler
    return sampler.windows_drawn(step) if isinstance(sampler, MixtureSampler) else {}


def _val_loader(
    windows, collate_fn, micro_batch_size: int, dp_rank: int, dp_size: int, num_samples: int
) -> DataLoader:
    budget = min(len(windows), num_samples)
    share = budget // dp_size
    mine = list(range(dp_rank * share, (dp_rank + 1) * share))
    batches = [mine[i : i + micro_batch_size] for i in range(0, share, micro_batch_size)]
    return DataLoader(
        windows, batch_sampler=batches, collate_fn=collate_fn, pin_memory=torch.cuda.is_available()
    )
