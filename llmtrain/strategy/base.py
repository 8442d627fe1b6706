"""The one interface the training loop uses to run a step, whatever distributes the model.

The loop never asks which strategy it has: wrapping, mixed precision, gradient reduction,
accumulation boundaries, clipping, sharded checkpoints and consolidation all live behind these
methods. Implementations: `single` (one process, or DDP), `deepspeed` (ZeRO 1-3), `fsdp` (FSDP2).
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from llmtrain.config import TrainConfig
from llmtrain.dist import DistInfo
from llmtrain.model.loss import CausalLMLoss

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepResult:
    """What one optimizer step reports, as device tensors: reading them is the caller's choice
    (the loop reads them at log steps only), so a step never waits for the device."""

    grad_norm: torch.Tensor
    skipped: torch.Tensor  # bool scalar: the update was not applied (non-finite gradients)
    loss_scale: torch.Tensor | None = None  # fp16 only: the scale this step's backward used


def _is_fused(optimizer: torch.optim.Optimizer) -> bool:
    return bool(optimizer.defaults.get("fused"))


def torch_optimizer_step(
    params,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    grad_clip: float,
) -> StepResult:
    """Unscale, clip, step (or skip a non-finite step), zero grads: the plain-torch engines' step.

    The norm covers every shard on every rank (a DTensor norm is reduced first), so all ranks take
    the same skip decision. The skip happens on the device where the optimizer can do it: a fused
    AdamW takes a `found_inf` flag and leaves weights, moments and step count alone when it is set
    (the mechanism GradScaler uses for fp16, which therefore also skips without a sync). Only the
    unfused AdamW needs the host to decide, which on CPU costs nothing. The LR schedule advances
    every step, skipped or not: the LR is a function of the loop's step.
    """
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or math.inf)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a partial norm per rank until reduced
        grad_norm = grad_norm.full_tensor()
    skipped = ~torch.isfinite(grad_norm)
    # The scale tensor is updated in place by scaler.update(): keep this step's value.
    scale_before = scaler._get_scale_async().clone() if scaler.is_enabled() else None
    if scaler.is_enabled():
        scaler.step(optimizer)
        scaler.update()
    elif _is_fused(optimizer):
        optimizer.found_inf = skipped.float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not skipped.item():
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return StepResult(grad_norm=grad_norm.detach(), skipped=skipped, loss_scale=scale_before)


class Strategy(ABC):
    name: str = "base"

    def __init__(self, cfg: TrainConfig, dist: DistInfo) -> None:
        self.cfg = cfg
        self.dist = dist
        self.module: CausalLMLoss | None = None

    @property
    def dp_size(self) -> int:
        """Data-parallel replicas; every strategy here shards data over all ranks."""
        return self.dist.world_size

    @property
    def dp_rank(self) -> int:
        return self.dist.rank

    @property
    def hf_model(self) -> PreTrainedModel:
        """The (unwrapped) Hugging Face model, for its config and for generation."""
        assert self.module is not None, "call setup() first"
        return self.module.model

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES.get(self.cfg.trainer.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=dtype)

    @abstractmethod
    def setup(self, module: CausalLMLoss, lr_lambda: Callable[[int], float]) -> None:
        """Wrap the model, build the optimizer and the LR schedule (multiplier of optim.lr per step)."""

    @abstractmethod
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed token loss of one micro-batch (fp32 scalar); the logits when `batch["labels"]` is
        None (generation, which must go through the same wrapped module as training)."""

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
    def train(self, mode: bool = True) -> None: ...

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
