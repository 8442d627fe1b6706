"""Optimizers and learning-rate schedules: what the strategies step, below them in the layers."""

from llmtrain.optim.adamw import build_optimizer, param_groups, use_fused
from llmtrain.optim.schedule import lr_lambda

__all__ = ["build_optimizer", "lr_lambda", "param_groups", "use_fused"]
