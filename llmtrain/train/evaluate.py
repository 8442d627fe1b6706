"""Validation loss: the token-weighted mean over every rank's share of the validation windows."""

from __future__ import annotations

import torch

from llmtrain.dist import all_reduce_max, all_reduce_sum
from llmtrain.model.loss import IGNORE_INDEX
from llmtrain.strategy.base import Strategy


def evaluate(strategy: Strategy, val_loader) -> float | None:
    """Mean validation loss, or None when there is no validation data.

    Sharded engines need every rank in every forward, so all ranks run the same number of
    batches: the smallest count any rank has.
    """
    device = strategy.dist.device
    n_batches = torch.tensor(-float(len(val_loader)), device=device)
    n_batches = int(-all_reduce_max(n_batches).item())
    if n_batches == 0:
        return None
    totals = torch.zeros(2, device=device, dtype=torch.float64)
    with strategy.eval_mode():
        for i, batch in enumerate(val_loader):
            if i == n_batches:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            totals[0] += strategy.forward(batch).double()
            totals[1] += (batch["labels"] != IGNORE_INDEX).sum()
    all_reduce_sum(totals)
    return (totals[0] / totals[1].clamp(min=1)).item()
