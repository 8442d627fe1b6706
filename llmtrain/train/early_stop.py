"""Early stopping and the best evaluation: which evaluation was best, and whether to stop.

The tracked metric is `trainer.early_stopping.metric` (or `val_loss` with `trainer.keep_best` and
early stopping off). Its best value and step and the count of evaluations since live in the
`TrainState`, so a run killed in the middle of a patience window and resumed stops at the same
step as an uninterrupted one. The loop saves a checkpoint at every improving evaluation, and
retention keeps the one the latest checkpoint's state names (`llmtrain.checkpoint.layout.prune`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from llmtrain.config import ConfigError, TrainerConfig
from llmtrain.train.state import TrainState

log = logging.getLogger("llmtrain")


@dataclass
class Verdict:
    """What one evaluation means: a new best (save its checkpoint), or a reason to stop."""

    improved: bool = False
    stop_reason: str | None = None


class BestTracker:
    """Reads each evaluation's metrics against the best so far (state lives in `TrainState`);
    keeps the latest evaluation's metrics and whether early stopping ended the run."""

    def __init__(self, trainer: TrainerConfig, state: TrainState) -> None:
        self.tracked = trainer.best_metric
        self.early = trainer.early_stopping
        self.stops = trainer.early_stopping.metric is not None
        self.last_metrics: dict[str, float] = {}
        self.stopped = False
        if self.tracked is not None and state.best_metric not in (None, self.tracked[0]):
            # A resume that tracks another metric: the old best means nothing for the new one.
            log.warning(
                "best-checkpoint metric changed from %s to %s on resume: tracking restarts",
                state.best_metric,
                self.tracked[0],
            )
            state.best_value = state.best_step = None
            state.evals_since_best = 0
        if self.tracked is not None:
            state.best_metric = self.tracked[0]

    def already_stopped(self, state: TrainState) -> str | None:
        """The stop reason when a resumed run had already run out of patience (a rerun of a run
        that stopped early stops again instead of training on; a larger patience continues it)."""
        if self.stops and state.best_step is not None and state.evals_since_best >= self.early.patience:
            self.stopped = True
            return self._reason(state)
        return None

    def __call__(self, metrics: dict[str, float], state: TrainState) -> Verdict:
        self.last_metrics = metrics
        if self.tracked is None:
            return Verdict()
        name, mode = self.tracked
        if name not in metrics:
            logged = ", ".join(sorted(metrics)) or "none (this run has no validation data)"
            key = "trainer.early_stopping.metric" if self.stops else "trainer.keep_best (tracks val_loss)"
            raise ConfigError(
                f"{key}: {name!r} is not a metric this run's evaluation logs; it logs: {logged}"
            )
        value = metrics[name]
        delta = self.early.min_delta if self.stops else 0.0
        best = state.best_value
        better = best is None or (value < best - delta if mode == "min" else value > best + delta)
        if math.isfinite(value) and better:
            state.best_value, state.best_step, state.evals_since_best = value, state.step, 0
            return Verdict(improved=True)
        state.evals_since_best += 1
        if self.stops and state.evals_since_best >= self.early.patience:
            self.stopped = True
            return Verdict(stop_reason=self._reason(state))
        return Verdict()

    def _reason(self, state: TrainState) -> str:
        name, mode = self.tracked
        return (
            f"early stopping: {name} ({mode}) did not improve by more than {self.early.min_delta:g} "
            f"for {state.evals_since_best} evaluations (patience {self.early.patience}); "
            f"best {state.best_value:.6g} at step {state.best_step}, stopped at step {state.step}"
        )
