"""DCP checkpoints are read as data only: a crafted `.metadata` or non-tensor entry is refused
before DCP's own readers (plain pickle / weights_only=False) would run it; genuine ones load."""

from __future__ import annotations

import pathlib
import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from llmtrain.strategy.dcp_reader import SafeFileSystemReader, UnsafeCheckpointError, WeightsOnlyLoadPlanner

# dcp.load re-raises a reader's or planner's error inside a CheckpointException, message kept.
REFUSED = (UnsafeCheckpointError, CheckpointException)


class _TouchOnLoad:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _save(state: dict, path: pathlib.Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, checkpoint_id=path, no_dist=True)


def _load(state: dict, path: pathlib.Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(
            state, storage_reader=SafeFileSystemReader(path), planner=WeightsOnlyLoadPlanner(), no_dist=True
        )


def test_genuine_checkpoint_with_tensor_and_number_entries_loads(tmp_path):
    _save({"w": torch.arange(6.0).reshape(2, 3), "lr": 0.5}, tmp_path)
    state = {"w": torch.zeros(2, 3), "lr": 0.0}
    _load(state, tmp_path)
    assert torch.equal(state["w"], torch.arange(6.0).reshape(2, 3)) and state["lr"] == 0.5


def test_crafted_metadata_is_refused_and_never_runs(tmp_path):
    _save({"w": torch.ones(2)}, tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / ".metadata").write_bytes(pickle.dumps(_TouchOnLoad(marker)))
    with pytest.raises(REFUSED, match="refused to read this DCP metadata"):
        _load({"w": torch.zeros(2)}, tmp_path)
    assert not marker.exists()


def test_crafted_non_tensor_entry_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    _save({"w": torch.ones(2), "lr": _TouchOnLoad(marker)}, tmp_path)
    assert not marker.exists()
    with pytest.raises(REFUSED, match="'lr' is not plain data"):
        _load({"w": torch.zeros(2), "lr": 0.0}, tmp_path)
    assert not marker.exists()
