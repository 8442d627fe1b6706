"""Typed, validated configuration (no torch imports here)."""

from llmtrain.config.load import compose_config, from_yaml, load_config, strip_launcher_args, to_dict, to_yaml
from llmtrain.config.schema import (
    ConfigError,
    DataConfig,
    LoggerConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SchedConfig,
    StrategyConfig,
    TrainConfig,
    TrainerConfig,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "LoggerConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SchedConfig",
    "StrategyConfig",
    "TrainConfig",
    "TrainerConfig",
    "compose_config",
    "from_yaml",
    "load_config",
    "strip_launcher_args",
    "to_dict",
    "to_yaml",
]
