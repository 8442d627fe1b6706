"""Typed, validated configuration (no torch imports here)."""

from llmtrain.config.checks import ConfigError
from llmtrain.config.data import DataConfig, SFTConfig, SourceConfig
from llmtrain.config.load import compose_config, from_yaml, load_config, strip_launcher_args, to_dict, to_yaml
from llmtrain.config.schema import (
    LoggerConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SchedConfig,
    TrainConfig,
    TrainerConfig,
)
from llmtrain.config.strategy import DeepSpeedConfig, DistConfig, FSDPConfig, ParallelConfig, StrategyConfig

__all__ = [
    "ConfigError",
    "DataConfig",
    "DeepSpeedConfig",
    "DistConfig",
    "FSDPConfig",
    "LoggerConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "RunConfig",
    "SchedConfig",
    "SFTConfig",
    "SourceConfig",
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
