"""Learning-rate schedules as multipliers of optim.lr, so every engine can use them (LambdaLR).

Extending a run (`run.dir=... trainer.max_steps=` larger than before) re-plans the decay from the
resume step, never re-entering warmup (`LRSchedule.resume`): the warmup length stays what the run
started with, and from the resume step on the multiplier follows the schedule planned over the new
`max_steps`, scaled so it starts at the multiplier the run had reached and still ends at the floor.
So a wsd run extended from its stable phase keeps the peak and decays at the new end (what wsd is
for), and a finished cosine run extended stays at its floor rather than jumping back up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmtrain.config import SchedConfig


def lr_lambda(cfg: SchedConfig, max_steps: int, warmup_steps: int | None = None) -> Callable[[int], float]:
    """Linear warmup from ~0 to 1, then the named shape down to `min_lr_ratio` at `max_steps`.

    wsd (warmup-stable-decay) holds the peak until the last `decay_fraction` of the steps after
    warmup, then decays linearly: the stable phase can be extended or branched from any checkpoint.
    """
    warmup = min(cfg.warmup_steps, max_steps) if warmup_steps is None else warmup_steps
    floor = cfg.min_lr_ratio

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.name == "constant":
            return 1.0
        span = max(1, max_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        if cfg.name == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.name == "linear":
            return floor + (1 - floor) * (1 - progress)
        decay_start = 1.0 - cfg.decay_fraction  # wsd
        if progress < decay_start:
            return 1.0
        return floor + (1 - floor) * (1 - (progress - decay_start) / cfg.decay_fraction)

    return multiplier


@dataclass
class _Segment:
    """From `start` on: floor + scale × (plan over `max_steps` - floor)."""

    start: int
    max_steps: int
    scale: float


class LRSchedule:
    """The multiplier of optim.lr per step, re-planned when a resumed run changes `max_steps`.

    Its plan is part of the train state (`to_dict`/`resume`), so a run extended twice keeps both
    re-plans. `lr_lambda()` is what the strategies hand to `LambdaLR`: a plain function, so torch
    saves none of this in the scheduler's state dict.
    """

    def __init__(self, cfg: SchedConfig, max_steps: int) -> None:
        self.cfg = cfg
        self.warmup = min(cfg.warmup_steps, max_steps)
        self.segments = [_Segment(0, max_steps, 1.0)]

    def _plan(self, segment: _Segment) -> Callable[[int], float]:
        return lr_lambda(self.cfg, segment.max_steps, self.warmup)

    def __call__(self, step: int) -> float:
        segment = next(s for s in reversed(self.segments) if s.start <= step)
        floor = self.cfg.min_lr_ratio
        return floor + segment.scale * (self._plan(segment)(step) - floor)

    def lr_lambda(self) -> Callable[[int], float]:
        return lambda step: self(step)

    @property
    def max_steps(self) -> int:
        return self.segments[-1].max_steps

    def to_dict(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "segments": [vars(s) for s in self.segments]}

    def resume(self, saved: dict[str, Any] | None, step: int, max_steps: int) -> None:
        """Continue the saved plan (None: a checkpoint from before plans were saved, planned over
        this run's `max_steps`); re-plan from `step` when `max_steps` differs from its horizon."""
        if saved is not None:
            self.warmup = saved["warmup"]
            self.segments = [_Segment(**s) for s in saved["segments"]]
        if max_steps == self.max_steps:
            return
        floor = self.cfg.min_lr_ratio
        new = _Segment(step, max_steps, 1.0)
        reached, planned = self(step) - floor, self._plan(new)(step) - floor
        # Scale the new plan so it starts where the run is (a plan at its floor stays there).
        new.scale = reached / planned if abs(planned) > 1e-12 else 1.0
        self.segments.append(new)
