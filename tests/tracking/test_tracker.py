"""The tracker alone (no training): samples, W&B failures, and a resumed tracker's W&B steps."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import wandb
from wandb_records import offline_runs

from llmtrain.config import load_config
from llmtrain.tracking.tracker import METRICS_FILE, SAMPLES_FILE, WANDB_RUN_ID, Tracker


def _cfg(run_dir: Path):
    run_dir.mkdir(parents=True, exist_ok=True)
    return load_config(["logger=wandb", "logger.mode=offline", f"run.dir={run_dir}"])


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _wandb_warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "W&B" in r.getMessage()
    ]


def test_samples_land_in_samples_jsonl_and_in_a_wandb_table(tmp_path, wandb_offline):
    run_dir = tmp_path / "run"
    tracker = Tracker(_cfg(run_dir), run_dir)
    rows = [
        {"prompt": "Once upon", "completion": " a time"},
        {"prompt": "2 + 2 =", "completion": " 4"},
    ]
    tracker.log({"step": 5, "loss": 1.0})
    tracker.log_samples(5, rows)
    tracker.close()

    assert _jsonl(run_dir / SAMPLES_FILE) == [{"step": 5, "key": "samples", **row} for row in rows]
    (run,) = offline_runs(run_dir)
    (row,) = [h for h in run.history if h["_step"] == 5]
    assert row["samples._type"] == "table-file" and row["samples.nrows"] == 2
    table = json.loads((run.dir / "files" / row["samples.path"]).read_text())
    assert table["columns"] == ["prompt", "completion"]
    assert table["data"] == [[r["prompt"], r["completion"]] for r in rows]


def test_wandb_log_failure_warns_once_and_metrics_jsonl_stays_complete(
    tmp_path, wandb_offline, monkeypatch, caplog
):
    class BrokenRun:
        step = 0
        settings = None

        def log(self, *args, **kwargs):
            raise ConnectionError("network is unreachable")

    monkeypatch.setattr(wandb, "init", lambda **kwargs: BrokenRun())
    run_dir = tmp_path / "run"
    tracker = Tracker(_cfg(run_dir), run_dir)
    for step in range(1, 5):
        tracker.log({"step": step, "loss": 1.0 / step})
    tracker.log_samples(4, [{"prompt": "a", "completion": "b"}])
    tracker.summary({"final_val_loss": 0.5})
    tracker.close()

    assert [m["step"] for m in _jsonl(run_dir / METRICS_FILE)] == [1, 2, 3, 4]
    (warning,) = _wandb_warnings(caplog)
    assert "network is unreachable" in warning


def test_resumed_tracker_continues_the_wandb_run_without_relogging_steps_it_already_has(
    tmp_path, wandb_offline
):
    """The crashed process logged steps 1..5 but its checkpoint is at step 3; the resumed process
    logs 4..7 again. W&B must not receive 4 and 5 twice (a step going backwards in one run)."""
    run_dir = tmp_path / "run"
    cfg = _cfg(run_dir)
    first = Tracker(cfg, run_dir)
    for step in range(1, 6):
        first.log({"step": step, "loss": float(step)})
    first.close()
    state = {WANDB_RUN_ID: first.wandb_run_id}  # what the trainer keeps in its checkpoint
    assert state[WANDB_RUN_ID]

    second = Tracker(cfg, run_dir, resume_step=3, wandb_run_id=state[WANDB_RUN_ID])
    for step in range(4, 8):
        second.log({"step": step, "loss": float(step)})
    second.close()

    segments = offline_runs(run_dir)
    assert [s.id for s in segments] == [state[WANDB_RUN_ID]] * 2
    assert segments[0].steps == [1, 2, 3, 4, 5]
    assert segments[1].steps == [6, 7]
    assert [m["step"] for m in _jsonl(run_dir / METRICS_FILE)] == [1, 2, 3, 4, 5, 6, 7]


def test_rank_other_than_zero_writes_nothing_and_opens_no_wandb_run(tmp_path, wandb_offline, monkeypatch):
    monkeypatch.setattr("llmtrain.tracking.tracker.is_main_process", lambda: False)
    monkeypatch.setattr(wandb, "init", lambda **kwargs: pytest.fail("wandb.init on a non-zero rank"))
    run_dir = tmp_path / "run"
    tracker = Tracker(_cfg(run_dir), run_dir)
    tracker.log({"step": 1, "loss": 1.0})
    tracker.log_samples(1, [{"prompt": "a"}])
    tracker.summary({"step": 1})
    tracker.close()
    assert list(run_dir.iterdir()) == []


def test_a_torn_last_line_of_metrics_jsonl_is_dropped_with_a_warning_not_a_crash(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / METRICS_FILE).write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # died mid-write
    tracker = Tracker(_cfg(run_dir), run_dir, resume_step=1)
    tracker.log({"step": 2, "loss": 1.5})
    tracker.close()
    assert [m["step"] for m in _jsonl(run_dir / METRICS_FILE)] == [1, 2]
    assert "dropped a torn last line" in caplog.text


def test_confusion_matrix_goes_to_confusion_jsonl_and_a_wandb_confusion_plot(tmp_path, wandb_offline):
    run_dir = tmp_path / "run"
    tracker = Tracker(_cfg(run_dir), run_dir)
    gold, pred, names = [0, 0, 1, 2, 2], [0, 1, 1, 2, 0], ["neg", "neu", "pos"]
    tracker.log({"step": 4, "val_accuracy": 0.6})
    tracker.log_confusion(4, gold, pred, names)
    tracker.close()

    (saved,) = _jsonl(run_dir / "confusion.jsonl")
    assert saved == {
        "step": 4,
        "key": "val_confusion",
        "labels": names,
        "matrix": [[1, 1, 0], [0, 1, 0], [1, 0, 1]],
    }
    (run,) = offline_runs(run_dir)
    (row,) = [h for h in run.history if h["_step"] == 4]
    assert row["val_accuracy"] == 0.6
    assert row["val_confusion_table._type"] == "table-file"  # wandb.plot.confusion_matrix's data
    table = json.loads((run.dir / "files" / row["val_confusion_table.path"]).read_text())
    counts = {(a, p): n for a, p, n in table["data"]}
    assert counts[("neg", "neu")] == 1 and counts[("pos", "neg")] == 1 and counts[("pos", "pos")] == 1
