"""Building what a run needs, shared by the training loop and the benchmark."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmtrain.config import ConfigError, TrainConfig
from llmtrain.data import check_manifest, class_weights, classify_labels, ensure_prepared
from llmtrain.data.errors import DataError
from llmtrain.data.loader import build_source_val_loaders, build_train_loader, build_val_loader
from llmtrain.data.tokenizer.load import load_tokenizer
from llmtrain.dist import DistInfo, broadcast_object, is_main_process
from llmtrain.model.build import build_model
from llmtrain.model.classifier import SequenceClassificationLoss
from llmtrain.model.loss import CausalLMLoss
from llmtrain.optim.schedule import LRSchedule
from llmtrain.strategy import Strategy, build_strategy


@dataclass
class RunData:
    tokenizer: Any
    shards_dir: Path
    manifest: dict[str, Any]
    # Classification: class names in id order and the loss's class weights; None otherwise.
    label_names: list[str] | None = None
    class_weights: list[float] | None = None


def prepare_data(cfg: TrainConfig) -> RunData:
    """Tokenizer and shards; rank 0 prepares missing shards while the other ranks wait."""
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    shards_dir, error = None, None
    if is_main_process():
        try:
            shards_dir = ensure_prepared(cfg.data)
        except (ConfigError, DataError) as exc:  # every rank fails with it, not only rank 0
            error = exc
    # The other ranks wait in a collective bounded by dist.timeout_s: a corpus (or SFT set) that
    # takes longer to tokenize fails them with a timeout. Prepare big ones with launch/prepare_data.py.
    error = broadcast_object(error)
    if error is not None:
        raise error
    shards_dir = shards_dir or ensure_prepared(cfg.data)
    manifest = check_manifest(shards_dir, tokenizer)
    return RunData(
        tokenizer,
        shards_dir,
        manifest,
        classify_labels(cfg.data, shards_dir),
        class_weights(cfg.data, shards_dir),
    )


def build_model_and_strategy(
    cfg: TrainConfig,
    dist: DistInfo,
    vocab_size: int,
    schedule: LRSchedule | None = None,
    data: RunData | None = None,
) -> Strategy:
    """The model wrapped by its strategy, stepping `schedule` (default: planned over max_steps).

    A classification run (`data.label_names`) gets a sequence classifier and its loss module."""
    # Same seed on every rank: identical initial weights everywhere (sharded engines rely on it).
    torch.manual_seed(cfg.trainer.seed)
    labels = data.label_names if data is not None else None
    if labels is not None:
        assert data is not None
        model = build_model(cfg.model, vocab_size, dist.device, labels, data.tokenizer.pad_token_id)
        module: torch.nn.Module = SequenceClassificationLoss(model, data.class_weights)
    else:
        model = build_model(cfg.model, vocab_size, dist.device)
        module = CausalLMLoss(
            model, cfg.data.document_masking, cfg.model.loss_chunk_tokens, cfg.model.compile
        )
    strategy = build_strategy(cfg, dist)
    schedule = schedule or LRSchedule(cfg.sched, cfg.trainer.max_steps)
    strategy.setup(module, schedule.lr_lambda())
    return strategy


def build_loaders(cfg: TrainConfig, shards_dir: Path, strategy: Strategy, start_step: int):
    """(train loader positioned at `start_step`, validation loader) for this rank."""
    train_loader = build_train_loader(
        cfg.data,
        shards_dir,
        global_batch_size=cfg.trainer.global_batch_size,
        micro_batch_size=cfg.trainer.micro_batch_for(strategy.dp_size),
        dp_rank=strategy.dp_rank,
        dp_size=strategy.dp_size,
        seed=cfg.trainer.seed,
        start_step=start_step,
    )
    val_loader = build_val_loader(
        cfg.data,
        shards_dir,
        micro_batch_size=cfg.trainer.micro_batch_for(strategy.dp_size),
        dp_rank=strategy.dp_rank,
        dp_size=strategy.dp_size,
        # In global batches, so the validation set does not change with the micro batch.
        num_samples=cfg.trainer.eval_batches * cfg.trainer.global_batch_size,
    )
    return train_loader, val_loader


def source_val_loaders(cfg: TrainConfig, shards_dir: Path, strategy: Strategy) -> dict:
    """A data mixture's per-source validation loaders for this rank ({} for one corpus), each the
    size of the main validation set."""
    return build_source_val_loaders(
        cfg.data,
        shards_dir,
        micro_batch_size=cfg.trainer.micro_batch_for(strategy.dp_size),
        dp_rank=strategy.dp_rank,
        dp_size=strategy.dp_size,
        num_samples=cfg.trainer.eval_batches * cfg.trainer.global_batch_size,
    )


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
