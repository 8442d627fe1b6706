"""Evaluation: the validation loss (token-weighted over every rank's share of the validation set),
any extra metric functions (generated answers, choice scoring, classification), and, when prompts
are configured, greedy samples; all logged at the step they were taken."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch

from llmtrain.config import TrainConfig
from llmtrain.dist import all_reduce_max, all_reduce_sum, broadcast_object
from llmtrain.model.loss import IGNORE_INDEX
from llmtrain.strategy.base import Strategy
from llmtrain.tracking.tracker import Tracker
from llmtrain.train.samples import PromptSampler
from llmtrain.train.setup import RunData
from llmtrain.train.state import TrainState

log = logging.getLogger("llmtrain")

# An extra validation metric: every rank calls it (sharded engines need all of them in each
# forward); rank 0's numbers are logged. Returns {} when it has nothing to report.
MetricFn = Callable[[Strategy, TrainState], dict[str, float]]


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


def source_val_losses(loaders: dict) -> MetricFn:
    """`val_loss/<source>` for each source's own validation loader (a data mixture)."""

    def metrics(strategy: Strategy, state: TrainState) -> dict[str, float]:
        out = {}
        for name, loader in loaders.items():
            loss = evaluate(strategy, loader)
            if loss is not None:
                out[f"val_loss/{name}"] = loss
        return out

    return metrics


class Evaluator:
    """One evaluation: samples (if any), then the validation loss and the extra metrics, logged as
    one line; the best loss is kept in the train state, so it survives a resume."""

    def __init__(
        self,
        strategy: Strategy,
        val_loader,
        tracker: Tracker,
        sampler: PromptSampler | None,
        metric_fns: Sequence[MetricFn] = (),
    ) -> None:
        self.strategy, self.val_loader, self.tracker, self.sampler = strategy, val_loader, tracker, sampler
        self.metric_fns = list(metric_fns)

    def __call__(self, state: TrainState) -> dict[str, float]:
        """Every validation metric of this evaluation (`val_loss`, `val_ppl`, then the extra
        functions' keys); {} when there is no validation data."""
        if self.sampler is not None:
            rows = self.sampler(self.strategy)
            for row in rows:
                log.info("step %d | sample | %r -> %r", state.step, row["prompt"], row["completion"])
            self.tracker.log_samples(state.step, rows)
        metrics: dict[str, float] = {}
        val_loss = evaluate(self.strategy, self.val_loader)
        if val_loss is not None:
            metrics = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
            if state.best_val_loss is None or val_loss < state.best_val_loss:
                state.best_val_loss = val_loss
        for fn in self.metric_fns:
            metrics.update(fn(self.strategy, state))
        # Rank 0's numbers on every rank: decisions made from them (early stopping, saving the
        # best checkpoint, both collective) must agree even where ranks' float sums differ.
        metrics = broadcast_object(metrics)
        if metrics:
            # The console line leaves out per-source and per-class keys (`name/part`); the file has them.
            console = tuple(k for k in metrics if "/" not in k)
            self.tracker.log({"step": state.step, **metrics}, console)
        return metrics

    def final_report(self, step: int) -> None:
        """The readable tables (per-class precision/recall/F1) of the last evaluation, for the log."""
        for fn in self.metric_fns:
            table = getattr(fn, "last_table", None)
            if table is not None:
                log.info("validation metrics at step %d:\n%s", step, table)


def build_evaluator(
    cfg: TrainConfig, data: RunData, strategy: Strategy, val_loader, tracker: Tracker
) -> Evaluator:
    """The run's evaluation: samples for `trainer.sample_prompts`, and the metric functions its
    config asks for (classification metrics, per-source losses of a mixture, generated answers,
    choice scoring)."""
    from llmtrain.train.classify_eval import classification_metrics_for
    from llmtrain.train.reply_metrics import ChoiceScores, GeneratedAnswers
    from llmtrain.train.setup import source_val_loaders

    sampler = PromptSampler(cfg, data.tokenizer) if cfg.trainer.sample_prompts else None
    fns: list[MetricFn] = []
    classify = classification_metrics_for(cfg, data.label_names, data.shards_dir, strategy, tracker)
    if classify is not None:
        fns.append(classify)
    per_source = source_val_loaders(cfg, data.shards_dir, strategy)
    if per_source:
        fns.append(source_val_losses(per_source))
    if cfg.trainer.eval_generate:
        fns.append(GeneratedAnswers(cfg, data.tokenizer, data.shards_dir, tracker))
    if cfg.data.choices:
        fns.append(ChoiceScores(cfg, data.tokenizer, data.shards_dir, tracker))
    return Evaluator(strategy, val_loader, tracker, sampler, fns)
