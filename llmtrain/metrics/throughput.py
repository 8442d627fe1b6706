"""Tokens per second and MFU, computed the same way by the training loop and the benchmark.

`real_tokens` is the one token count (padding excluded), `mfu_peak_flops` the one MFU denominator
(the peak for the dtype the matmuls run in, over all ranks), and `IntervalMeter` sums a logging
interval on the device so the host reads it only when it logs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from llmtrain.dist import all_reduce_sum
from llmtrain.metrics.peak import peak_flops
from llmtrain.model.precision import compute_dtype


def real_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Non-padding input tokens of a batch: padding carries document id -1 (SFT rows); pretraining
    windows have none."""
    if "document_ids" in batch:
        return (batch["document_ids"] >= 0).sum()
    return torch.tensor(batch["input_ids"].numel(), device=batch["input_ids"].device)


def mfu_peak_flops(device: torch.device, precision: str, param_dtype: str, world_size: int) -> float:
    """The MFU denominator: every rank's peak FLOP/s in the dtype the matmuls run in."""
    return peak_flops(device, compute_dtype(precision, param_dtype)) * world_size


@dataclass
class Interval:
    """One logging interval, summed over every rank."""

    steps: int
    loss: float  # token-mean loss over the interval's label tokens
    tokens: int  # real (non-padding) input tokens
    seconds: float
    data_seconds: float  # this rank's time waiting for batches
    tokens_per_sec: float
    mfu: float


class IntervalMeter:
    """Loss, label and token sums since the last `read`, kept as device tensors.

    Adding never reads a value back, so a step never waits for the device; `read` reduces the sums
    over ranks (a collective: every rank calls it at the same step) and starts a new interval.
    """

    def __init__(
        self, device: torch.device, flops_per_token: float, peak_flops: float, group: Any = None
    ) -> None:
        """`group`: the data-parallel ranks to sum over (None: all); tensor-parallel peers see the
        same batch and must not be counted twice."""
        self.device = device
        self.group = group
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.loss = torch.zeros((), device=device)
        self.labels = torch.zeros((), device=device)
        self.tokens = torch.zeros((), device=device)
        self.reset()

    def reset(self) -> None:
        self.loss.zero_(), self.labels.zero_(), self.tokens.zero_()
        self.steps, self.data_seconds, self.start = 0, 0.0, time.perf_counter()

    def add(
        self,
        loss_sum: torch.Tensor,
        num_labels: torch.Tensor,
        micro_batches: list[dict[str, torch.Tensor]],
        data_seconds: float = 0.0,
    ) -> None:
        """One step: this rank's summed token loss, label count and batches."""
        self.steps += 1
        self.loss += loss_sum
        self.labels += num_labels
        self.tokens += sum(real_tokens(mb) for mb in micro_batches)
        self.data_seconds += data_seconds

    def snapshot(self) -> dict[str, float]:
        """The interval so far, summed over ranks (a collective), for a checkpoint to carry."""
        totals = all_reduce_sum(torch.stack([self.loss, self.labels, self.tokens]), self.group).tolist()
        return {
            "loss": totals[0],
            "labels": totals[1],
            "tokens": totals[2],
            "steps": self.steps,
            "seconds": time.perf_counter() - self.start,
            "data_seconds": self.data_seconds,
        }

    def restore(self, snapshot: dict[str, float], is_main: bool) -> None:
        """Continue the interval a checkpoint carried. The sums go to one rank only (the others
        start at zero), so the next read's all-reduce counts them once."""
        if is_main:
            self.loss.fill_(snapshot["loss"]), self.labels.fill_(snapshot["labels"])
            self.tokens.fill_(snapshot["tokens"])
        self.steps = int(snapshot["steps"])
        self.data_seconds = snapshot["data_seconds"]
        self.start = time.perf_counter() - snapshot["seconds"]

    def read(self) -> Interval:
        totals = all_reduce_sum(torch.stack([self.loss, self.labels, self.tokens]), self.group)
        seconds = time.perf_counter() - self.start
        tokens = int(totals[2].item())
        tokens_per_sec = tokens / seconds
        interval = Interval(
            steps=self.steps,
            loss=(totals[0] / totals[1].clamp(min=1)).item(),
            tokens=tokens,
            seconds=seconds,
            data_seconds=self.data_seconds,
            tokens_per_sec=tokens_per_sec,
            mfu=self.flops_per_token * tokens_per_sec / self.peak_flops,
        )
        self.reset()
        return interval
