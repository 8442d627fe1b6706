"""Retention: `prune` keeps the newest `keep_last` checkpoints, `latest`, and always the newest one
saved with a finite training state."""

from __future__ import annotations

from pathlib import Path

from llmtrain.checkpoint import layout


def _fake_checkpoint(run_dir: Path, step: int, finite: bool) -> Path:
    folder = layout.checkpoints_dir(run_dir) / layout.step_dir_name(step)
    folder.mkdir(parents=True)
    meta = layout.CheckpointMeta("single", 1, {"step": step, "nonfinite_streak": 0 if finite else 1}, finite)
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
