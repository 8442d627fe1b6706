"""Strategies: how the model is distributed. `build_strategy` is the one place that maps names."""

from __future__ import annotations

from llmtrain.config import TrainConfig
from llmtrain.dist import DistInfo
from llmtrain.strategy.base import StepResult, Strategy


def strategy_class(name: str) -> type[Strategy]:
    if name == "single":
        from llmtrain.strategy.single import SingleStrategy

        return SingleStrategy
    if name in ("zero1", "zero2", "zero3", "zero3_offload"):
        from llmtrain.strategy.deepspeed import DeepSpeedStrategy

        return DeepSpeedStrategy
    if name == "fsdp":
        from llmtrain.strategy.fsdp import FSDPStrategy

        return FSDPStrategy
    raise NotImplementedError(f"strategy.name={name!r} is not implemented yet")


def build_strategy(cfg: TrainConfig, dist: DistInfo) -> Strategy:
    return strategy_class(cfg.strategy.name)(cfg, dist)


__all__ = ["Strategy", "StepResult", "build_strategy", "strategy_class"]
