"""Early stopping on a classification metric, end to end in one process: a classifier that
overfits a small generated set stops on `val_macro_f1` (mode max, patience 2) before max_steps, its
best checkpoint exported with --best scores exactly the logged best macro-F1 when evaluated again
(`launch/evaluate.py`'s code), and a run killed in the middle of its patience window resumes to the
same stop step."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from llmtrain.checkpoint import layout
from llmtrain.checkpoint.export import export_hf
from llmtrain.config import load_config
from llmtrain.data import ensure_prepared
from llmtrain.train.loop import EXIT_OK, EXIT_STOPPED, train
from llmtrain.train.predict import evaluate_classifier

pytestmark = pytest.mark.slow  # three short training runs (~1 min on 2 cores)

MAX_STEPS = 200
EVERY = 5


def overrides(tmp: Path, run: str) -> list[str]:
    """150 generated rows (120 to train on, 15 validation rows), a constant high LR: macro-F1 rises,
    then stalls while the model memorises its training rows."""
    base = {
        "run.dir": tmp / run,
        "data.cache_dir": tmp / "cache",
        "data.synthetic_labelled_rows": 150,
        "data.seq_len": 64,
        "data.loader_workers": 0,
        "model.num_layers": 2,
        "trainer.max_steps": MAX_STEPS,
        "trainer.eval_every": EVERY,
        "trainer.log_every": EVERY,
        "trainer.save_every": 100,
        "trainer.keep_last": 1,
        "trainer.global_batch_size": 8,
        "trainer.micro_batch_size": 8,
        "trainer.early_stopping.metric": "val_macro_f1",
        "trainer.early_stopping.mode": "max",
        "trainer.early_stopping.patience": 2,
        "sched": "constant",
        "sched.warmup_steps": 2,
        "optim.lr": 3e-3,
    }
    return ["+exp=classify", *(f"{k}={v}" for k, v in base.items())]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("classify_early_stop")


@pytest.fixture(scope="module")
def stopped(workdir):
    return train(load_config(overrides(workdir, "full")))


def test_patience_2_on_val_macro_f1_stops_before_max_steps_and_names_the_metric(stopped):
    summary = json.loads((stopped.run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (stopped.run_dir / "metrics.jsonl").read_text().splitlines()]
    f1 = {r["step"]: r["val_macro_f1"] for r in rows if "val_macro_f1" in r}
    assert stopped.exit_code == EXIT_OK and stopped.step < MAX_STEPS, stopped.stop_reason
    assert "val_macro_f1" in stopped.stop_reason and f"stopped at step {stopped.step}" in stopped.stop_reason
    best_step = summary["best_step"]
    assert summary["best_value"] == max(f1.values()) == f1[best_step]
    # Stopped at the second evaluation after the best that did not improve on it.
    assert stopped.step == best_step + 2 * EVERY
    assert all(f1[s] <= f1[best_step] for s in f1 if s > best_step)


def test_export_best_scores_the_logged_best_macro_f1_when_evaluated_again(stopped, workdir):
    summary = json.loads((stopped.run_dir / "summary.json").read_text())
    cfg = load_config(overrides(workdir, "full"))
    prepared = ensure_prepared(cfg.data)
    best = export_hf(stopped.run_dir, workdir / "export_best", best=True)
    result = evaluate_classifier(best, prepared, "val", workdir / "eval_best", "cpu")
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    assert metrics["macro_f1"] == pytest.approx(summary["best_value"], abs=1e-9)
    # Negative control: the latest checkpoint is another model (trained 2 evaluations further).
    latest = export_hf(stopped.run_dir, workdir / "export_latest")
    assert (latest / "model.safetensors").read_bytes() != (best / "model.safetensors").read_bytes()


def test_kill_mid_patience_window_resumes_to_the_same_stop_step(stopped, workdir, monkeypatch):
    import llmtrain.train.loop as loop

    best_step = json.loads((stopped.run_dir / "summary.json").read_text())["best_step"]
    kill_at = best_step + EVERY + 2  # after the first evaluation that did not improve
    real, calls = loop.train_step, []

    def train_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(loop, "train_step", train_step)
        first = train(load_config(overrides(workdir, "killed")))
    assert first.exit_code == EXIT_STOPPED and first.step == kill_at, first.stop_reason
    saved = layout.read_trainer_state(first.last_checkpoint)
    assert (saved["best_step"], saved["evals_since_best"]) == (best_step, 1)
    second = train(load_config(overrides(workdir, "killed")))
    assert (second.exit_code, second.step, second.stop_reason) == (EXIT_OK, stopped.step, stopped.stop_reason)
