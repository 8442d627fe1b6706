"""The single-process loop end to end: it learns, resumes exactly after a signal, and refuses a
checkpoint from an incompatible config."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from llmtrain.config import ConfigError, load_config
from llmtrain.data.loader import build_train_loader
from llmtrain.data.pretrain.prepare import ensure_shards
from llmtrain.train.loop import EXIT_OK, EXIT_STOPPED, train

N = 6  # steps before the interruption


def overrides(tmp: Path, run: str, **extra: object) -> list[str]:
    base = {
        "run.dir": tmp / run,
        "data.cache_dir": tmp / "cache",
        "data.seq_len": 64,
        "data.synthetic_docs": 300,
        "trainer.max_steps": 3 * N,
        "trainer.global_batch_size": 8,
        "trainer.micro_batch_size": 4,
        "trainer.log_every": 1,
        "trainer.eval_every": 0,
        "trainer.save_every": 100,
        "sched.warmup_steps": 2,
        "data.loader_workers": 0,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(run_dir) if "loss" in m}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("loop")


@pytest.fixture(scope="module")
def uninterrupted(workdir) -> Path:
    result = train(load_config(overrides(workdir, "full")))
    assert result.step == 3 * N and "max_steps" in result.stop_reason
    return result.run_dir


def _sigterm_after_step(run_dir: Path, step: int) -> threading.Thread:
    """Send SIGTERM to this process once metrics.jsonl shows `step`: a preemption mid-run."""

    def watch() -> None:
        path = run_dir / "metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline:
            if path.exists() and any(m.get("step", 0) >= step for m in metrics(run_dir)):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_resume_after_sigterm_continues_with_identical_losses(workdir, uninterrupted):
    run_dir = workdir / "interrupted"
    watcher = _sigterm_after_step(run_dir, N)
    first = train(load_config(overrides(workdir, "interrupted")))
    watcher.join()
    assert "SIGTERM" in first.stop_reason
    assert first.exit_code == EXIT_STOPPED, "an unfinished stop without a requeue is not a success"
    stopped_at = first.step
    assert N <= stopped_at < 3 * N, f"the signal should stop the run mid-way, stopped at {stopped_at}"
    assert json.loads((first.last_checkpoint / "trainer_state.json").read_text())["step"] == stopped_at

    second = train(load_config(overrides(workdir, "interrupted")))
    assert second.step == 3 * N and second.exit_code == EXIT_OK
    full, resumed = losses(uninterrupted), losses(run_dir)
    assert sorted(resumed) == list(range(1, 3 * N + 1)), "every step logged exactly once"
    for step in range(stopped_at + 1, 3 * N + 1):
        assert resumed[step] == full[step], f"step {step}: {resumed[step]} != {full[step]}"


def test_resumed_data_order_covers_the_same_windows(workdir):
    cfg = load_config(overrides(workdir, "data"))
    shards = ensure_shards(cfg.data)

    def take(start: int, steps: int) -> list[int]:
        loader = build_train_loader(cfg.data, shards, 8, 4, 0, 1, cfg.trainer.seed, start_step=start)
        it = iter(loader)
        return [int(i) for _ in range(steps * 2) for i in next(it)["sample_index"]]

    whole = take(0, 2 * N)
    resumed = take(0, N) + take(N, N)
    assert Counter(whole) == Counter(resumed) and len(set(whole)) == len(whole)


def test_loss_falls_and_metrics_have_the_documented_fields(uninterrupted):
    rows = [m for m in metrics(uninterrupted) if "loss" in m]
    for key in ("step", "loss", "lr", "grad_norm", "tokens", "tokens_per_sec", "mfu"):
        assert key in rows[0]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    assert rows[-1]["tokens"] == 3 * N * 8 * 64


def test_resume_with_an_incompatible_model_names_what_differs(workdir, uninterrupted):
    cfg = load_config(overrides(workdir, "full", **{"model.hidden_size": 64, "trainer.max_steps": 4 * N}))
    with pytest.raises(ConfigError, match=r"model\.hidden_size: checkpoint has 128, now 64"):
        train(cfg)


def test_keep_last_prunes_old_checkpoints_and_latest_points_at_the_newest(workdir):
    result = train(
        load_config(overrides(workdir, "prune", **{"trainer.save_every": 2, "trainer.keep_last": 2}))
    )
    ckpts = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert ckpts == [f"step_{3 * N - 2:06d}", f"step_{3 * N:06d}"]
    assert (result.run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{3 * N:06d}"


def _stop_with_sigterm_at_step(monkeypatch, step: int) -> None:
    """SIGTERM delivered during global step `step` exactly (the loop stops after that step)."""
    import llmtrain.train.loop as loop

    real, calls = loop.train_step, []

    def train_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", train_step)


def test_the_first_logged_interval_after_a_resume_covers_the_same_steps_as_uninterrupted(
    workdir, monkeypatch
):
    """log_every=4 and a stop at step 6: the line at step 8 averages steps 5-8 in both runs (it
    used to average 7-8 after the resume), and the tokens counter agrees too."""
    every = {"trainer.log_every": 4, "trainer.max_steps": 12}
    full = train(load_config(overrides(workdir, "interval_full", **every)))
    with monkeypatch.context() as m:
        _stop_with_sigterm_at_step(m, 6)
        first = train(load_config(overrides(workdir, "interval_resumed", **every)))
    assert first.step == 6 and "SIGTERM" in first.stop_reason
    train(load_config(overrides(workdir, "interval_resumed", **every)))
    uninterrupted, resumed = metrics(full.run_dir), metrics(workdir / "interval_resumed")
    by_step = {m["step"]: m for m in resumed if "loss" in m}
    for row in (m for m in uninterrupted if "loss" in m):
        assert by_step[row["step"]]["loss"] == row["loss"], row["step"]
        assert by_step[row["step"]]["tokens"] == row["tokens"], row["step"]


def test_extending_max_steps_on_resume_does_not_re_enter_warmup(workdir):
    """10 steps planned with a warmup longer than the run (clamped to 10), then extended to 20: the
    LR never rises again after the resume (it went 1.0e-3 -> 8.0e-4 -> 1.0e-3 before)."""
    base = {"trainer.max_steps": 10, "sched.warmup_steps": 20, "sched": "cosine"}
    train(load_config(overrides(workdir, "extended", **base)))
    train(load_config(overrides(workdir, "extended", **{**base, "trainer.max_steps": 20})))
    lrs = [m["lr"] for m in metrics(workdir / "extended") if "lr" in m and m["step"] >= 10]
    assert len(lrs) == 11 and all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:])), lrs


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"optim.lr": 3e-4}, "the optimizer and LR schedule"),
        ({"data.val_fraction": 0.2}, "train/validation split"),
    ],
)
def test_a_resume_that_would_not_apply_a_key_refuses_and_writes_nothing(
    workdir, uninterrupted, override, why
):
    """optim.lr used to be recorded in config.yaml but ignored (the schedule came from the
    checkpoint); data.val_fraction moved documents between the splits. Both now refuse, and the
    refused start leaves the run directory as it was."""

    def files() -> dict:  # the lock file alone is touched: it names the last holder
        return {
            p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*") if p.is_file() and p.name != ".lock"
        }

    before = files()
    cfg = load_config(overrides(workdir, "full", **{**override, "trainer.max_steps": 4 * N}))
    key = next(iter(override))
    with pytest.raises(ConfigError, match=rf"{key}: checkpoint has .*\(.*{why}"):
        train(cfg)
    assert files() == before


def test_a_resume_refused_for_another_strategy_writes_nothing(workdir, uninterrupted):
    """It used to be refused only after config.yaml, the tokenizer and the log were rewritten."""
    from llmtrain.checkpoint.errors import CheckpointError

    def files() -> dict:
        return {
            p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*") if p.is_file() and p.name != ".lock"
        }

    before = files()
    cfg = load_config(overrides(workdir, "full", strategy="fsdp", **{"trainer.max_steps": 4 * N}))
    with pytest.raises(CheckpointError, match="written by strategy 'single' but this run uses 'fsdp'"):
        train(cfg)
    assert files() == before
