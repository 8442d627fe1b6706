"""One process, or plain DDP when launched with several ranks: the reference the others must match."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_model
from torch.nn.parallel import DistributedDataParallel

from llmtrain.dist import is_distributed
from llmtrain.metrics.memory import tensor_bytes
from llmtrain.model.loss import CausalLMLoss
from llmtrain.strategy.base import StepResult, Strategy, torch_optimizer_step
from llmtrain.train.optim import build_optimizer

MODEL_FILE = "model.safetensors"
STATE_FILE = "optim_state.pt"


class SingleStrategy(Strategy):
    name = "single"

    def setup(self, module: CausalLMLoss, lr_lambda: Callable[[int], float]) -> None:
        self.module = module
        self.wrapped: torch.nn.Module = module
        if is_distributed():
            self.wrapped = DistributedDataParallel(
                module, device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None
            )
        self.optimizer = build_optimizer(self.cfg.optim, module, self.dist.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)
        # Dynamic loss scaling for fp16: overflowing steps are skipped and the scale is lowered.
        self.scaler = torch.amp.GradScaler(
            self.dist.device.type, enabled=self.cfg.trainer.precision == "fp16"
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.autocast():
            return self.wrapped(
                input_ids=batch["input_ids"],
                labels=batch["labels"],
                position_ids=batch.get("position_ids"),
                document_ids=batch.get("document_ids"),
            )

    def backward(self, loss: torch.Tensor, is_last_micro: bool) -> None:
        # DDP averages gradients over ranks; the loop's normalisation wants their sum.
        loss = loss * self.dp_size
        sync = contextlib.nullcontext()
        if isinstance(self.wrapped, DistributedDataParallel) and not is_last_micro:
            sync = self.wrapped.no_sync()
        with sync:
            self.scaler.scale(loss).backward()

    def step(self) -> StepResult:
        return torch_optimizer_step(
            self.module.parameters(), self.optimizer, self.scheduler, self.scaler, self.cfg.trainer.grad_clip
        )

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def train(self, mode: bool = True) -> None:
        self.wrapped.train(mode)

    def save(self, path: Path) -> None:
        if self.dist.is_main:
            path.mkdir(parents=True, exist_ok=True)
            save_model(self.hf_model, str(path / MODEL_FILE))
            torch.save(
                {
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                },
                path / STATE_FILE,
            )

    def load(self, path: Path) -> None:
        # Every DDP rank reads the same full state: replicas must start identical.
        load_model(self.hf_model, str(path / MODEL_FILE), device=str(self.dist.device))
        state = torch.load(path / STATE_FILE, map_location=self.dist.device, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        if not self.dist.is_main:
            return None
        return {k: v.detach().cpu() for k, v in self.hf_model.state_dict().items()}

    @classmethod
    def consolidate(cls, path: Path) -> dict[str, torch.Tensor]:
        return load_file(str(path / MODEL_FILE))

    def memory_report(self) -> dict[str, int]:
        params = list(self.module.parameters())
        states = [t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        return {
            "param_bytes": tensor_bytes(params),
            "grad_bytes": tensor_bytes(p for p in params if p.requires_grad),
            "optimizer_bytes": tensor_bytes(states),
        }
