"""Resuming a run directory never runs code from its files: a crafted pickle planted where earlier
versions kept pickled state (the optimizer's `optim_state.pt`, `rng/rank_N.pt`) is refused or
ignored, and the marker file its unpickling would create never appears."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from crafted import plant
from run_args import tiny_overrides

from llmtrain.checkpoint import layout
from llmtrain.checkpoint.manifest import write_manifest
from llmtrain.config import load_config
from llmtrain.strategy.state_file import StateFileError
from llmtrain.train.loop import train


def _first_run(tmp: Path, run: str) -> Path:
    result = train(load_config(tiny_overrides(tmp, run, **{"trainer.max_steps": 3})))
    return result.last_checkpoint


def _replace_with_crafted(stem: Path, marker: Path) -> Path:
    """Drop the state files of `stem` and plant the crafted pickle as the old `<stem>.pt`; the
    manifest is rewritten, as whoever crafted the folder would."""
    for old in stem.parent.glob(stem.name + ".*"):
        old.unlink()
    planted = stem.with_name(stem.name + ".pt")
    plant(planted, marker)
    return planted


def test_crafted_optimizer_pickle_is_refused_and_never_runs(tmp_path):
    ckpt = _first_run(tmp_path, "optim")
    marker = tmp_path / "pwned"
    planted = _replace_with_crafted(ckpt / layout.MODEL_DIR / "optim_state", marker)
    write_manifest(ckpt)
    with pytest.raises(StateFileError, match=f"{planted}: refused to load this pickle"):
        train(load_config(tiny_overrides(tmp_path, "optim", **{"trainer.max_steps": 6})))
    assert not marker.exists(), "the crafted pickle ran"


def test_crafted_rng_pickle_is_ignored_and_never_runs(tmp_path, caplog):
    ckpt = _first_run(tmp_path, "rng")
    marker = tmp_path / "pwned"
    _replace_with_crafted(layout.rng_file(ckpt, 0), marker)
    write_manifest(ckpt)
    with caplog.at_level(logging.WARNING):
        result = train(load_config(tiny_overrides(tmp_path, "rng", **{"trainer.max_steps": 6})))
    assert result.step == 6
    assert "RNG streams restart" in caplog.text
    assert not marker.exists(), "the crafted pickle ran"
