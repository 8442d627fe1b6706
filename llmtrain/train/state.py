"""What the loop carries from step to step and saves with every checkpoint, besides the strategy's
tensors: counters, the non-finite streak, the W&B run id."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("llmtrain")


@dataclass
class TrainState:
    """Everything besides the strategy's tensors that a resumed run needs to continue exactly."""

    step: int = 0
    tokens: int = 0
    best_val_loss: float | None = None
    # The tracked metric's best evaluation (`trainer.early_stopping`, `trainer.keep_best`): its name,
    # value and step (that step's checkpoint is kept), and evaluations since without an improvement.
    best_metric: str | None = None
    best_value: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    # Consecutive skipped (non-finite) steps up to `step`: a resumed run continues the count, so a
    # divergence cannot hide by being split over restarts.
    nonfinite_streak: int = 0
    skipped_steps: int = 0
    wandb_run_id: str | None = None
    # The LR schedule's plan (`LRSchedule.to_dict`): its warmup and any re-plans of an extended run.
    schedule: dict[str, Any] | None = None
    # The unlogged part of the current logging interval, summed over ranks (`IntervalMeter.snapshot`):
    # after a resume the first logged line covers the same steps as in an uninterrupted run.
    interval: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "best_val_loss": self.best_val_loss,
            "best_metric": self.best_metric,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "evals_since_best": self.evals_since_best,
            "nonfinite_streak": self.nonfinite_streak,
            "skipped_steps": self.skipped_steps,
            "wandb_run_id": self.wandb_run_id,
            "schedule": self.schedule,
            "interval": self.interval,
            # The data position is the step: the sampler's order is a function of (seed, step).
            "data": {"next_step": self.step},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        """Read back what `to_dict` wrote (keys a checkpoint from an older version lacks default)."""
        return cls(
            step=d["step"],
            tokens=d["tokens"],
            best_val_loss=d.get("best_val_loss"),
            best_metric=d.get("best_metric"),
            best_value=d.get("best_value"),
            best_step=d.get("best_step"),
            evals_since_best=d.get("evals_since_best", 0),
            nonfinite_streak=d.get("nonfinite_streak", 0),
            skipped_steps=d.get("skipped_steps", 0),
            wandb_run_id=d.get("wandb_run_id"),
            schedule=d.get("schedule"),
            interval=d.get("interval"),
        )


class SkipCounter:
    """Non-finite (skipped) steps, counted on the device and read by the host only when asked."""

    def __init__(self, streak: int, step: int, device: torch.device) -> None:
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        self.streak = torch.full((), streak, dtype=torch.int64, device=device)
        self.last = torch.zeros((), dtype=torch.int64, device=device)
        self.since = step + 1

    def add(self, skipped: torch.Tensor, step: int) -> None:
        self.count += skipped
        self.streak = (self.streak + 1) * skipped
        self.last = torch.where(skipped, step, self.last)

    def read(self, state: TrainState) -> int:
        """Fold the counts since the last read into `state`, warning about the skipped steps;
        returns the current streak."""
        count, streak, last = torch.stack([self.count, self.streak, self.last]).tolist()
        self.count.zero_()
        state.nonfinite_streak = int(streak)
        if count:
            state.skipped_steps += int(count)
            where = f"step {last}" if count == 1 else f"{count} steps of {self.since}-{state.step}"
            log.warning("%s: non-finite gradients, update skipped", where)
        self.since = state.step + 1
        return state.nonfinite_streak
