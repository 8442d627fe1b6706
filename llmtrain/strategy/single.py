"""One process, or plain DDP when launched with several ranks: the reference the others must match."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_model
from torch.nn.parallel import DistributedDataParallel

from llmtrain.dist import is_distributed
from llmtrain.model.loss import CausalLMLoss
from llmtrain.strategy.state_file import load_state_or_legacy, save_state
from llmtrain.strategy.torch_engine import TorchEngineStrategy

MODEL_FILE = "model.safetensors"
# Optimizer, schedule and scaler state: optim_state.safetensors + optim_state.json (no pickle).
STATE_STEM = "optim_state"
LEGACY_STATE_FILE = "optim_state.pt"  # the pickle earlier versions wrote


class SingleStrategy(TorchEngineStrategy):
    name = "single"

    def setup(self, module: CausalLMLoss, lr_lambda: Callable[[int], float]) -> None:
        self.module = module
        self._wrapped: torch.nn.Module = module
        if is_distributed():
            self._wrapped = DistributedDataParallel(
                module, device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None
            )
        self._build_engine(module, lr_lambda)

    @property
    def wrapped(self) -> torch.nn.Module:
        return self._wrapped

    def backward(self, loss: torch.Tensor, is_last_micro: bool) -> None:
        # DDP averages gradients over ranks; the loop's normalisation wants their sum.
        loss = loss * self.dp_size
        sync = contextlib.nullcontext()
        if isinstance(self._wrapped, DistributedDataParallel) and not is_last_micro:
            sync = self._wrapped.no_sync()
        with sync:
            self.scaler.scale(loss).backward()

    def save(self, path: Path) -> None:
        if self.dist.is_main:
            path.mkdir(parents=True, exist_ok=True)
            save_model(self.hf_model, str(path / MODEL_FILE))
            save_state({"optimizer": self.optimizer.state_dict(), **self.schedule_state()}, path / STATE_STEM)

    def load(self, path: Path) -> None:
        # Every DDP rank reads the same full state: replicas must start identical.
        load_model(self.hf_model, str(path / MODEL_FILE), device=str(self.dist.device))
        # On the CPU: load_state_dict moves each moment to its parameter's device.
        state = load_state_or_legacy(path / STATE_STEM, path / LEGACY_STATE_FILE)
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_schedule_state(state)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        if not self.dist.is_main:
            return None
        return {k: v.detach().cpu() for k, v in self.hf_model.state_dict().items()}

    @classmethod
    def consolidate(cls, path: Path) -> dict[str, torch.Tensor]:
        return load_file(str(path / MODEL_FILE))
