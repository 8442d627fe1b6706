"""What `single` and `fsdp` share: a plain torch optimizer, LR schedule and loss scaler, stepped
by us rather than by an engine (DeepSpeed brings its own)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from llmtrain.metrics.memory import tensor_bytes
from llmtrain.optim import build_optimizer
from llmtrain.strategy.base import StepResult, Strategy


def _is_fused(optimizer: torch.optim.Optimizer) -> bool:
    return bool(optimizer.defaults.get("fused"))


def torch_optimizer_step(
    params: Iterable[torch.Tensor],
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
    grad_norm = clip_grad_norm(params, grad_clip)
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


def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip to `max_norm` (0: no clipping) by the global norm of every gradient; returns the norm.

    `torch.nn.utils.clip_grad_norm_` stacks all norms into one tensor, which fails when gradients
    are DTensors on different meshes (tensor-parallel weights on the 2-D mesh beside FSDP-only
    norms and embeddings on the data-parallel mesh). So: one norm per mesh, each reduced over its
    mesh, then combined, and each group clipped with the same coefficient.
    """
    groups: dict[object, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p)
    if not groups:
        return torch.zeros(())
    norms = []
    for group in groups.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in group], 2.0)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)  # partial until reduced
    total = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
    for group in groups.values():
        torch.nn.utils.clip_grads_with_norm_(group, max_norm or math.inf, total)
    return total


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor; a plain tensor as it is."""
    return t.to_local() if isinstance(t, DTensor) else t


class TorchEngineStrategy(Strategy):
    """A strategy whose optimizer, schedule and fp16 loss scaler are plain torch objects.

    Subclasses wrap the module in `setup` and then call `_build_engine` on the parameters the
    optimizer should own (sharded DTensors under FSDP2, so optimizer state is sharded too).
    """

    def _build_engine(self, module: torch.nn.Module, lr_lambda: Callable[[int], float]) -> None:
        self.optimizer = build_optimizer(self.cfg.optim, module, self.dist.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)
        # Dynamic loss scaling for fp16: overflowing steps are skipped and the scale is lowered.
        # GradScaler handles DTensor gradients too: its inf check on a sharded gradient is reduced
        # (max) over the mesh, so every rank skips the same steps and keeps the same scale.
        self.scaler = torch.amp.GradScaler(
            self.dist.device.type, enabled=self.cfg.trainer.precision == "fp16"
        )

    def step(self) -> StepResult:
        return torch_optimizer_step(
            self.module.parameters(), self.optimizer, self.scheduler, self.scaler, self.cfg.trainer.grad_clip
        )

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def schedule_state(self) -> dict[str, Any]:
        """LR schedule and loss scale: the same on every rank, so one copy is saved."""
        return {"scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_schedule_state(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    def memory_report(self) -> dict[str, int]:
        """Bytes this rank holds: its shards (DTensor local tensors) under FSDP2, everything else alone."""
        params = list(self.module.parameters())
        states = [_local(t) for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        return {
            "param_bytes": tensor_bytes(_local(p) for p in params),
            "grad_bytes": tensor_bytes(_local(p) for p in params if p.requires_grad),
            "optimizer_bytes": tensor_bytes(states),
        }
