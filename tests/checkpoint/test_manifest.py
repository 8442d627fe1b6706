"""Content hashes: every checkpoint records a sha256 per file; a corrupted file in the latest
checkpoint is detected on resume (warning naming it) and the newest older checkpoint that verifies
is used, with the losses an uninterrupted run has from there; export refuses the corrupt one."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from run_args import losses, tiny_overrides

from llmtrain.checkpoint import layout
from llmtrain.checkpoint.export import export_hf
from llmtrain.checkpoint.manifest import MANIFEST, NoVerifiedCheckpointError, sha256, verify
from llmtrain.config import load_config
from llmtrain.train.loop import train


def _corrupt(path: Path) -> None:
    """Random bytes over the middle of the file; size and name unchanged."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(256))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("manifest")


@pytest.fixture(scope="module")
def reference(workdir) -> dict[int, float]:
    result = train(load_config(tiny_overrides(workdir, "full", **{"trainer.max_steps": 9})))
    assert result.step == 9
    return losses(result.run_dir)


def test_every_checkpoint_file_is_hashed_in_its_manifest(workdir, reference):
    ckpt = layout.latest_checkpoint(workdir / "full")
    files = json.loads((ckpt / MANIFEST).read_text())["files"]
    assert "model/model.safetensors" in files and "config.yaml" in files
    assert any(name.startswith("rng/") for name in files)
    assert all(sha256(ckpt / name) == digest for name, digest in files.items())
    assert verify(ckpt) is None


def test_corrupt_latest_checkpoint_falls_back_to_the_older_one_with_identical_losses(
    workdir, reference, caplog
):
    first = train(load_config(tiny_overrides(workdir, "corrupt")))
    assert [p.name for p in layout.complete_steps(first.run_dir)] == ["step_000003", "step_000006"]
    bad = first.last_checkpoint / "model" / "model.safetensors"
    _corrupt(bad)

    with caplog.at_level(logging.INFO):
        second = train(load_config(tiny_overrides(workdir, "corrupt", **{"trainer.max_steps": 9})))
    assert f"skipping checkpoint {first.last_checkpoint}: {bad}: content differs" in caplog.text
    assert f"resumed from {first.run_dir / 'checkpoints' / 'step_000003'} at step 3" in caplog.text
    assert second.step == 9 and second.exit_code == 0
    resumed = losses(second.run_dir)
    for step in range(4, 10):
        assert resumed[step] == reference[step], f"step {step}: {resumed[step]} != {reference[step]}"


def test_export_refuses_a_corrupt_checkpoint_naming_the_file(workdir, reference, tmp_path):
    src = layout.latest_checkpoint(workdir / "full")
    bad = src / "config.yaml"
    bad.write_text(bad.read_text() + "# edited\n")
    with pytest.raises(NoVerifiedCheckpointError, match=f"{bad}: content differs"):
        export_hf(src, tmp_path / "out")


def test_no_checkpoint_that_verifies_refuses_to_start_afresh(workdir, tmp_path):
    run = tiny_overrides(tmp_path, "all_bad", **{"trainer.max_steps": 3})
    first = train(load_config(run))
    _corrupt(first.last_checkpoint / "model" / "model.safetensors")
    with pytest.raises(NoVerifiedCheckpointError, match="no checkpoint under .* verifies"):
        train(load_config(run))
