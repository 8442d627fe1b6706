"""Classification validation metrics at each evaluation: predict the whole validation split on
every data-parallel rank's share, gather, score with scikit-learn.

The validation split is cut into equal contiguous shares (the last rank's share padded with
repeats of its last example, so sharded engines run the same forwards on every rank); each rank
writes its real rows' probabilities into a [n, classes] tensor and one sum over the data-parallel
group gives every rank all n rows, in order, none twice, none dropped.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from llmtrain.dist import all_reduce_sum
from llmtrain.metrics.classification import classification_metrics, metrics_table, with_support
from llmtrain.strategy.base import Strategy
from llmtrain.tracking.tracker import Tracker
from llmtrain.train.state import TrainState

log = logging.getLogger("llmtrain")


def predict_probabilities(
    strategy: Strategy, dataset: Any, collate_fn: Any, micro_batch_size: int
) -> torch.Tensor:
    """Softmax probabilities [len(dataset), classes] (fp32, CPU), the same on every rank."""
    n, dp, rank = len(dataset), strategy.dp_size, strategy.dp_rank
    share = -(-n // dp)
    mine = [min(i, n - 1) for i in range(rank * share, (rank + 1) * share)]
    probs: torch.Tensor | None = None
    device = strategy.dist.device
    with strategy.eval_mode():
        for start in range(0, share, micro_batch_size):
            idx = mine[start : start + micro_batch_size]
            batch = collate_fn([dataset[i] for i in idx])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = strategy.forward({**batch, "labels": None}).float()
            if probs is None:
                probs = torch.zeros(n, logits.shape[-1], device=device)
            real = [j for j, i in enumerate(idx) if rank * share + start + j < n]
            if real:
                rows = torch.tensor([idx[j] for j in real], device=device)
                probs[rows] = torch.softmax(logits[real], dim=-1)
    assert probs is not None, "empty validation split"
    return all_reduce_sum(probs, strategy.dp_group).cpu()


class ClassificationMetrics:
    """The Evaluator's extra metric function for classification runs (`fn(strategy, state)`).

    Logs the confusion matrix itself (W&B plot, `confusion.jsonl`) and keeps the last table, which
    the loop prints at the end.
    """

    def __init__(
        self, dataset: Any, collate_fn: Any, label_names: list[str], micro_batch_size: int, tracker: Tracker
    ) -> None:
        self.dataset, self.collate_fn = dataset, collate_fn
        self.label_names = label_names
        self.micro_batch_size = micro_batch_size
        self.tracker = tracker
        self.gold = [int(x) for x in dataset.labels]
        self.last_table: str | None = None

    def __call__(self, strategy: Strategy, state: TrainState) -> dict[str, float]:
        if len(self.dataset) == 0:
            return {}
        probs = predict_probabilities(strategy, self.dataset, self.collate_fn, self.micro_batch_size)
        pred = probs.argmax(-1).tolist()
        metrics = classification_metrics(self.gold, pred, self.label_names, prefix="val_")
        self.tracker.log_confusion(state.step, self.gold, pred, self.label_names)
        self.last_table = metrics_table(with_support(metrics, self.gold, self.label_names), self.label_names)
        return metrics


def classification_metrics_for(
    cfg: Any, label_names: list[str] | None, shards_dir: Any, strategy: Strategy, tracker: Tracker
) -> ClassificationMetrics | None:
    """The extra metric function of a classification run (None for other runs)."""
    if label_names is None:
        return None
    from llmtrain.data import samples

    dataset, collate_fn = samples(cfg.data, shards_dir, "val")
    micro = cfg.trainer.micro_batch_for(strategy.dp_size)
    return ClassificationMetrics(dataset, collate_fn, label_names, micro, tracker)
