"""The one interface the training loop uses to run a step, whatever distributes the model.

The loop never asks which strategy it has: wrapping, mixed precision, gradient reduction,
accumulation boundaries, clipping, sharded checkpoints and consolidation all live behind these
methods. Implementations: `single` (one process, or DDP), `deepspeed` (ZeRO 1-3), `fsdp` (FSDP2).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from llmtrain.config import TrainConfig
from llmtrain.dist import DistInfo, ParallelDims, data_parallel_group
from llmtrain.model.loss import CausalLMLoss
from llmtrain.model.precision import mixed_precision_dtype


@dataclass
class StepResult:
    """What one optimizer step reports, as device tensors: reading them is the caller's choice
    (the loop reads them at log steps only), so a step never waits for the device."""

    grad_norm: torch.Tensor
    skipped: torch.Tensor  # bool scalar: the update was not applied (non-finite gradients)
    loss_scale: torch.Tensor | None = None  # fp16 only: the scale this step's backward used


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """The batch fields the loss module takes (`CausalLMLoss.forward`); the rest (sample indices)
    stay with the loop."""
    return {
        "input_ids": batch["input_ids"],
        "labels": batch["labels"],
        "position_ids": batch.get("position_ids"),
        "document_ids": batch.get("document_ids"),
    }


class Strategy(ABC):
    name: str = "base"
    # Whether `load` can restore a checkpoint written by another number of ranks. Checked by
    # llmtrain.checkpoint before loading, with the conversion recipe when it cannot.
    reshards: bool = False

    def __init__(self, cfg: TrainConfig, dist: DistInfo) -> None:
        self.cfg = cfg
        self.dist = dist
        self.module: CausalLMLoss | None = None

    @property
    def dims(self) -> ParallelDims:
        return ParallelDims.from_config(self.cfg.parallel, self.dist.world_size)

    @property
    def dp_size(self) -> int:
        """Data-parallel size: ranks that train on different samples (world / (tensor × sequence
        parallel))."""
        return self.dims.dp

    @property
    def dp_rank(self) -> int:
        return self.dims.dp_rank(self.dist.rank)

    @property
    def dp_group(self) -> Any:
        """The process group label counts and metrics are summed over (None: all ranks): the
        data-parallel and sequence-parallel ranks, whose local batches hold different tokens."""
        return data_parallel_group(self.dims)

    def local_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's part of a batch its data-parallel rank loaded: all of it, except under
        sequence parallelism (a slice of every sequence). Label and token counts are taken from it."""
        return batch

    @property
    def hf_model(self) -> PreTrainedModel:
        """The (unwrapped) Hugging Face model, for its config and for generation."""
        assert self.module is not None, "call setup() first"
        return self.module.model

    @property
    @abstractmethod
    def wrapped(self) -> torch.nn.Module:
        """The module forward and train/eval go through (the engine's wrapper, or the loss module)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to `trainer.precision`; engines that cast the weights themselves return a no-op."""
        dtype = mixed_precision_dtype(self.cfg.trainer.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=dtype)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed token loss of one micro-batch (fp32 scalar); the logits when `batch["labels"]` is
        None (generation, which must go through the same wrapped module as training)."""
        with self.autocast():
            return self.wrapped(**model_inputs(batch))

    def train(self, mode: bool = True) -> None:
        self.wrapped.train(mode)

    @abstractmethod
    def setup(self, module: CausalLMLoss, lr_lambda: Callable[[int], float]) -> None:
        """Wrap the model, build the optimizer and the LR schedule (multiplier of optim.lr per step)."""

    @abstractmethod
    def backward(self, loss: torch.Tensor, is_last_micro: bool) -> None:
        """Accumulate gradients of `loss`, already normalised to its share of the global-batch mean.

        Gradients must end up as the SUM over ranks of each rank's contributions; implementations
        whose reduction averages over ranks scale by the data-parallel size. Gradient sync may be
        skipped until `is_last_micro`.
        """

    @abstractmethod
    def step(self) -> StepResult:
        """Unscale, clip to trainer.grad_clip, step optimizer and schedule, zero gradients.

        A step whose gradients are not finite is skipped (weights untouched) and reported.
        """

    @abstractmethod
    def lr(self) -> float: ...

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write model, optimizer, schedule and scaler state into `path` (called on every rank)."""

    @abstractmethod
    def load(self, path: Path) -> None:
        """Restore what `save` wrote (called on every rank)."""

    @abstractmethod
    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Consolidated model weights (HF names, on CPU) on rank 0; None on other ranks."""

    @classmethod
    @abstractmethod
    def consolidate(cls, path: Path) -> dict[str, torch.Tensor]:
        """Consolidated model weights read from a checkpoint folder, in one process, without a model."""

    @abstractmethod
    def memory_report(self) -> dict[str, int]:
        """Bytes this rank holds for parameters, gradients and optimizer state."""

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        self.train(False)
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(True)
