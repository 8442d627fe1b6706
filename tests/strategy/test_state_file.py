"""Our own small state as safetensors + JSON: optimizer, schedule and scaler state round-trip
exactly; a pickle from an older version loads only as tensors and containers."""

from __future__ import annotations

import pathlib

import pytest
import torch

from llmtrain.strategy.state_file import StateFileError, load_state, load_state_or_legacy, save_state


def _engine() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (s + 1))
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        sched.step()
    return opt, sched, torch.amp.GradScaler("cpu", enabled=True)


def test_optimizer_schedule_and_scaler_state_round_trip_exactly(tmp_path):
    opt, sched, scaler = _engine()
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict()}
    save_state(state, tmp_path / "optim_state")
    back = load_state(tmp_path / "optim_state")
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]  # betas stay a tuple
    assert back["optimizer"]["state"].keys() == state["optimizer"]["state"].keys()  # int ids
    for pid, moments in state["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(back["optimizer"]["state"][pid][name], value), (pid, name)
    assert back["scheduler"] == state["scheduler"] and back["scaler"] == state["scaler"]
    opt.load_state_dict(back["optimizer"])  # loads into a real optimizer


def test_an_object_that_is_not_plain_data_cannot_be_saved(tmp_path):
    with pytest.raises(TypeError, match="cannot store a"):
        save_state({"fn": print}, tmp_path / "x")


class _TouchOnLoad:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_legacy_pickle_with_code_is_refused_and_plain_legacy_state_loads(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _TouchOnLoad(marker)}, tmp_path / "optim_state.pt")
    with pytest.raises(StateFileError, match="refused to load this pickle"):
        load_state_or_legacy(tmp_path / "optim_state", tmp_path / "optim_state.pt")
    assert not marker.exists()

    opt, sched, _ = _engine()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp_path / "old.pt")
    back = load_state_or_legacy(tmp_path / "old", tmp_path / "old.pt")
    assert back["scheduler"] == sched.state_dict()
