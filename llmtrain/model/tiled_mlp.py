"""Tiled MLP (`model.tiled_mlp`): each decoder layer's MLP runs over the sequence in shards.

At long sequence lengths the MLP's intermediates (gate, up and their product, [tokens,
intermediate_size] each, 3-4x the hidden size) dominate activation memory. DeepSpeed's `TiledMLP`
(Arctic Long Sequence Training) runs the MLP one sequence shard at a time under no_grad and
recomputes each shard in backward, so only one shard's intermediates exist at once. It is a plain
autograd Function (it works without DeepSpeed's engine); under ZeRO-3 it holds back DeepSpeed's
gradient hooks (`ds_grad_is_ready`) until the last shard's gradient has been accumulated.

The MLP is token-wise, so the result does not depend on the shard count (up to the order of float
sums in the weight gradients).
"""

from __future__ import annotations

import types

import torch
from torch import nn
from transformers import PreTrainedModel

from llmtrain.config import ConfigError


def _mlp_forward(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # The class's own forward: the instance attribute set below is the tiled one.
    return type(mlp).forward(mlp, x)


def _tiled_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP

    params = [p for p in self.parameters() if p.requires_grad]
    return TiledMLP.apply(_mlp_forward, self, x, self.tiled_mlp_shards, params)


def apply_tiled_mlp(model: PreTrainedModel, shards: int) -> None:
    """Run every decoder layer's `mlp` over `shards` sequence shards (in place)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not layers or not all(isinstance(getattr(layer, "mlp", None), nn.Module) for layer in layers):
        raise ConfigError(
            f"model.tiled_mlp={shards}: {type(model).__name__} has no decoder layers with an `mlp` module; "
            "set model.tiled_mlp=0"
        )
    for layer in layers:
        layer.mlp.tiled_mlp_shards = shards
        layer.mlp.forward = types.MethodType(_tiled_forward, layer.mlp)
