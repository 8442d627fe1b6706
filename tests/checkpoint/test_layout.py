"""Retention: `prune` keeps the newest `keep_last` checkpoints, `latest`, the best evaluation's
checkpoint the latest state names, and always the newest one saved with a finite training state."""

from __future__ import annotations

from pathlib import Path

from llmtrain.checkpoint import layout


def _fake_checkpoint(run_dir: Path, step: int, finite: bool, best_step: int | None = None) -> Path:
    folder = layout.checkpoints_dir(run_dir) / layout.step_dir_name(step)
    folder.mkdir(parents=True)
    trainer = {"step": step, "nonfinite_streak": 0 if finite else 1, "best_step": best_step}
    meta = layout.CheckpointMeta("single", 1, trainer, finite)
    (folder / layout.TRAINER_STATE).write_text(meta.to_json())
    layout.point_latest_at(run_dir, folder)
    return folder


def test_prune_keeps_the_newest_finite_checkpoint_behind_a_non_finite_streak(tmp_path):
    for step, finite in ((2, True), (4, True), (6, False), (8, False)):
        _fake_checkpoint(tmp_path, step, finite)
    layout.prune(tmp_path, keep_last=1)
    assert [p.name for p in layout.complete_steps(tmp_path)] == ["step_000004", "step_000008"]
    assert layout.newest_finite(tmp_path).name == "step_000004"


def test_meta_without_the_finite_flag_reads_as_finite(tmp_path):
    folder = _fake_checkpoint(tmp_path, 2, True)
    (folder / layout.TRAINER_STATE).write_text('{"step": 2, "strategy": "single", "world_size": 1}')
    assert layout.read_meta(folder).finite


def test_prune_keeps_the_best_checkpoint_the_latest_state_names_and_only_that_one(tmp_path):
    """Best at step 4 (named by every later state): kept by keep_last=1 beside latest; the step 2
    and 6 folders go. The earlier best (2, named by step 2's own state) is not protected."""
    _fake_checkpoint(tmp_path, 2, True, best_step=2)
    for step in (4, 6, 8):
        _fake_checkpoint(tmp_path, step, True, best_step=4)
    layout.prune(tmp_path, keep_last=1)
    assert [p.name for p in layout.complete_steps(tmp_path)] == ["step_000004", "step_000008"]
    assert layout.best_checkpoint(tmp_path).name == "step_000004"


def test_prune_without_a_tracked_best_keeps_only_the_newest(tmp_path):
    for step in (2, 4, 6):
        _fake_checkpoint(tmp_path, step, True)
    layout.prune(tmp_path, keep_last=1)
    assert [p.name for p in layout.complete_steps(tmp_path)] == ["step_000006"]
    assert layout.best_checkpoint(tmp_path) is None
