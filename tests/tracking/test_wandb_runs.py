"""Training runs with `logger=wandb` (offline, read back from the `.wandb` record log)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import wandb
from wandb_records import offline_runs

import llmtrain.train.loop as loop
from llmtrain.checkpoint import layout
from llmtrain.config import load_config, to_dict
from llmtrain.tracking.tracker import WANDB_RUN_ID
from llmtrain.train.loop import train


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_offline_run_holds_config_environment_per_step_metrics_and_summary(tmp_path, tiny_run, wandb_offline):
    cfg = load_config(tiny_run(tmp_path / "run", "logger=wandb", "logger.mode=offline", "optim.lr=3e-3"))
    result = train(cfg)

    (run,) = offline_runs(result.run_dir)
    ckpt_state = layout.read_trainer_state(result.last_checkpoint)
    assert run.id == ckpt_state[WANDB_RUN_ID]
    assert run.run.display_name.startswith("default-") and "lr=0.003" in run.run.display_name
    assert run.run.run_group == "default"
    assert {"model:tiny", "strategy:single", "data:synthetic"} <= set(run.run.tags)

    # The config is nested (filterable as trainer.max_steps in the UI), plus the environment.
    expected = to_dict(cfg)
    for section in ("run", "model", "data", "trainer", "optim", "sched", "strategy", "logger"):
        assert run.config[section] == expected[section]
    env = run.config["environment"]
    assert len(env["git"]["commit"]) == 40 and env["world_size"] == 1
    assert env["packages"]["wandb"] == wandb.__version__
    assert json.loads((result.run_dir / "environment.json").read_text())["git"] == env["git"]

    # Every step in metrics.jsonl is one W&B history row at that step, with the same values.
    by_step = {h["_step"]: h for h in run.history}
    assert run.steps == list(range(0, 7))
    for line in _metrics(result.run_dir):
        row = by_step[line["step"]]
        for key, value in line.items():
            if key != "step":
                assert row[key] == value, (line["step"], key)
    assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_sec", "mfu", "step_time", "data_time"} <= set(
        by_step[6]
    )
    assert {"val_loss", "val_ppl"} <= set(by_step[3]) and "val_loss" in by_step[0]

    val_losses = [h["val_loss"] for h in run.history if "val_loss" in h]
    assert run.summary["final_val_loss"] == val_losses[-1] == result.final_val_loss
    assert run.summary["best_val_loss"] == min(val_losses)
    assert run.summary["tokens"] == by_step[6]["tokens"]
    assert "max_steps" in run.summary["stop"] and run.summary["wall_time_s"] > 0


def test_resume_after_a_crash_continues_the_same_wandb_run_with_steps_strictly_increasing(
    tmp_path, tiny_run, wandb_offline, monkeypatch
):
    """Crash during step 7 with the last checkpoint at step 4: the rerun resumes at 4 and computes
    5 and 6 again, which W&B already has; they must not be sent twice."""
    overrides = tiny_run(
        tmp_path / "run", "logger=wandb", "logger.mode=offline", "trainer.save_every=4", "trainer.max_steps=9"
    )
    real_step, calls = loop.train_step, []

    def crash_at_step_7(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("simulated node failure")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", crash_at_step_7)
    try:
        train(load_config(overrides))
    except RuntimeError as exc:
        assert "simulated" in str(exc)
    else:
        raise AssertionError("the first segment should have crashed")
    wandb.finish(exit_code=1)  # what wandb's atexit hook does when a real process dies
    monkeypatch.setattr(loop, "train_step", real_step)

    result = train(load_config(overrides))
    assert result.step == 9

    first, second = offline_runs(result.run_dir)
    assert first.id == second.id == layout.read_trainer_state(result.last_checkpoint)[WANDB_RUN_ID]
    assert first.steps == [0, 1, 2, 3, 4, 5, 6]
    assert second.steps == [7, 8, 9]
    steps = first.steps + second.steps
    assert all(a < b for a, b in zip(steps, steps[1:]))
    # The run dir's own record has every step once: the replayed 5 and 6 replaced, not appended.
    assert [m["step"] for m in _metrics(result.run_dir) if "loss" in m] == list(range(1, 10))


def test_wandb_init_failure_does_not_stop_training_and_warns_once(
    tmp_path, tiny_run, wandb_offline, monkeypatch, caplog
):
    def broken_init(**kwargs):
        raise wandb.errors.CommError("could not reach api.wandb.ai")

    monkeypatch.setattr(wandb, "init", broken_init)
    with caplog.at_level(logging.INFO, logger="llmtrain"):
        result = train(load_config(tiny_run(tmp_path / "run", "logger=wandb", "logger.mode=online")))

    assert result.step == 6
    logged = _metrics(result.run_dir)
    assert [m["step"] for m in logged if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in logged if "val_loss" in m] == [0, 3, 6]
    assert json.loads((result.run_dir / "summary.json").read_text())["step"] == 6
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "W&B" in r.getMessage()
    ]
    assert len(warnings) == 1 and "could not reach api.wandb.ai" in warnings[0]
