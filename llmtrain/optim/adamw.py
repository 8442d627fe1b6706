"""AdamW with weight decay only on matrices (not on norms and biases)."""

from __future__ import annotations

import torch
from torch import nn

from llmtrain.config import OptimConfig


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def use_fused(cfg: OptimConfig, device: torch.device) -> bool:
    return cfg.fused == "true" or (cfg.fused == "auto" and device.type == "cuda")


def build_optimizer(cfg: OptimConfig, module: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        param_groups(module, cfg.weight_decay),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        fused=use_fused(cfg, device) or None,
    )
