"""Learning-rate schedules as multipliers of optim.lr, so every engine can use them (LambdaLR)."""

from __future__ import annotations

import math
from collections.abc import Callable

from llmtrain.config import SchedConfig


def lr_lambda(cfg: SchedConfig, max_steps: int) -> Callable[[int], float]:
    """Linear warmup from ~0 to 1, then the named shape down to `min_lr_ratio` at `max_steps`.

    wsd (warmup-stable-decay) holds the peak until the last `decay_fraction` of the steps after
    warmup, then decays linearly: the stable phase can be extended or branched from any checkpoint.
    """
    warmup = min(cfg.warmup_steps, max_steps)
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
