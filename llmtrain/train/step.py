"""One optimizer step over a global batch, with the loss normalised exactly over label tokens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmtrain.dist import all_reduce_sum
from llmtrain.model.loss import IGNORE_INDEX
from llmtrain.strategy.base import StepResult, Strategy


@dataclass
class StepOutput:
    loss_sum: torch.Tensor  # this rank's summed token loss (detached, on device)
    num_labels: torch.Tensor  # this rank's label-token count
    result: StepResult


def train_step(
    strategy: Strategy,
    micro_batches: list[dict[str, torch.Tensor]],
    phase_done: Callable[[str], None] | None = None,
) -> StepOutput:
    """Forward/backward every micro-batch of this rank, then one optimizer step.

    Each micro-batch's summed loss is divided by the label-token count of the WHOLE global batch
    (all micro-batches on all ranks), so the gradient is that of the exact token mean however
    examples of unequal length fall into micro-batches and ranks. (Averaging per-micro-batch means
    instead over-weights tokens of short micro-batches.)

    `phase_done(name)` is called as "forward_backward" and "optimizer" finish: the benchmark's
    step-time split. The loop passes nothing, so no timing syncs enter training.
    """
    num_labels = sum((mb["labels"] != IGNORE_INDEX).sum() for mb in micro_batches).float()
    global_labels = all_reduce_sum(num_labels.clone(), strategy.dp_group).clamp(min=1)
    loss_sum = torch.zeros((), device=num_labels.device)
    last = len(micro_batches) - 1
    for i, mb in enumerate(micro_batches):
        loss = strategy.forward(mb)
        strategy.backward(loss / global_labels, is_last_micro=i == last)
        loss_sum += loss.detach()
    if phase_done is not None:
        phase_done("forward_backward")
    result = strategy.step()
    if phase_done is not None:
        phase_done("optimizer")
    return StepOutput(loss_sum=loss_sum, num_labels=num_labels, result=result)
