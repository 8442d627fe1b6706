"""Evaluation: the validation loss (token-weighted over every rank's share of the validation set)
and, when prompts are configured, greedy samples; both logged at the step they were taken."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch

from llmtrain.dist import all_reduce_max, all_reduce_sum
from llmtrain.model.loss import IGNORE_INDEX
from llmtrain.strategy.base import Strategy
from llmtrain.tracking.tracker import Tracker
from llmtrain.train.samples import PromptSampler
from llmtrain.train.state import TrainState

log = logging.getLogger("llmtrain")


def evaluate(strategy: Strategy, val_loader) -> float | None:
    """Mean validation loss, or None when there is no validation data.

    Sharded engines need every rank in every forward, so all ranks run the same number of
    batches: the smallest count any rank has.
    """
    device = strategy.dist.device
    n_batches = torch.tensor(-float(len(val_loader)), device=device)
    n_batches = int(-all_reduce_max(n_batches).item())
    if n_batches == 0:
        return None
    totals = torch.zeros(2, device=device, dtype=torch.float64)
    with strategy.eval_mode():
        for i, batch in enumerate(val_loader):
            if i == n_batches:
                break
            batch = strategy.local_batch({k: v.to(device) for k, v in batch.items()})
            totals[0] += strategy.forward(batch).double()
            totals[1] += (batch["labels"] != IGNORE_INDEX).sum()
    all_reduce_sum(totals, strategy.dp_group)
    return (totals[0] / totals[1].clamp(min=1)).item()


# An extra validation metric: called on every rank at each evaluation (it may run collectives);
# rank 0's numbers are logged with the validation loss.
MetricFn = Callable[[Strategy, TrainState], dict[str, float]]


class Evaluator:
    """One evaluation: samples (if any), then the validation loss and any extra metrics
    (`extra_metrics`, e.g. classification accuracy / F1); the best loss is kept in the train
    state, so it survives a resume."""

    def __init__(
        self,
        strategy: Strategy,
        val_loader,
        tracker: Tracker,
        sampler: PromptSampler | None,
        extra_metrics: Sequence[MetricFn] = (),
    ) -> None:
        self.strategy, self.val_loader, self.tracker, self.sampler = strategy, val_loader, tracker, sampler
        self.extra_metrics = list(extra_metrics)

    def __call__(self, state: TrainState) -> float | None:
        if self.sampler is not None:
            rows = self.sampler(self.strategy)
            for row in rows:
                log.info("step %d | sample | %r -> %r", state.step, row["prompt"], row["completion"])
            self.tracker.log_samples(state.step, rows)
        val_loss = evaluate(self.strategy, self.val_loader)
        if val_loss is None:
            return None
        if state.best_val_loss is None or val_loss < state.best_val_loss:
            state.best_val_loss = val_loss
        metrics = {"step": state.step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
        for fn in self.extra_metrics:
            metrics.update(fn(self.strategy, state))
        console = tuple(k for k in ("val_loss", "val_ppl", "val_accuracy", "val_macro_f1") if k in metrics)
        self.tracker.log(metrics, console)
        return val_loss
