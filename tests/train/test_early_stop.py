"""Early stopping and the best checkpoint, end to end in one process: a run that overfits a tiny SFT
set stops on val_loss with patience 2, keeps its best checkpoint whatever keep_last deletes,
exports it with --best (whose validation loss recomputed is the logged best), and a run killed in
the middle of its patience window resumes to stop at the same step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmtrain.checkpoint import layout
from llmtrain.checkpoint.errors import CheckpointError
from llmtrain.checkpoint.export import export_hf
from llmtrain.config import ConfigError, load_config
from llmtrain.data import ensure_prepared
from llmtrain.data.loader import build_val_loader
from llmtrain.model.loss import IGNORE_INDEX, CausalLMLoss
from llmtrain.train.loop import EXIT_OK, EXIT_STOPPED, train

# End to end: about 10 short training runs (~100 s on 2 cores). One intra-op thread: a run started
# here is resumed by a launched rank and compared with an uninterrupted one exactly.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 150


def overrides(tmp: Path, run: str, **extra: object) -> list[str]:
    """60 generated SFT examples (about 40 to train on), a constant high LR: val_loss falls for
    ~50 steps, then the model memorises its training set and val_loss rises."""
    base = {
        "run.dir": tmp / run,
        "data.cache_dir": tmp / "cache",
        "data.sft.synthetic_examples": 60,
        "data.val_fraction": 0.3,
        "data.seq_len": 128,
        "data.loader_workers": 0,
        "model.num_layers": 2,
        "trainer.max_steps": MAX_STEPS,
        "trainer.eval_every": 5,
        "trainer.eval_batches": 1,
        "trainer.global_batch_size": 8,
        "trainer.micro_batch_size": 8,
        "trainer.log_every": 5,
        "trainer.save_every": 100,
        "trainer.keep_last": 1,
        "trainer.sample_prompts": "[]",
        "trainer.early_stopping.metric": "val_loss",
        "trainer.early_stopping.patience": 2,
        "sched": "constant",
        "sched.warmup_steps": 2,
        "optim.lr": 3e-3,
    }
    base.update(extra)
    return ["+exp=sft", *(f"{k}={v}" for k, v in base.items())]


def val_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_loss" in r]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("early_stop")


@pytest.fixture(scope="module")
def stopped(workdir):
    return train(load_config(overrides(workdir, "full")))


def test_patience_2_on_val_loss_stops_before_max_steps_at_the_second_evaluation_without_a_best(stopped):
    rows = val_rows(stopped.run_dir)
    losses = {r["step"]: r["val_loss"] for r in rows}
    best_step = min(losses, key=losses.get)
    assert stopped.exit_code == EXIT_OK and stopped.step < MAX_STEPS, stopped.stop_reason
    # The run stops at the second evaluation after the best, none of which improved on it.
    assert stopped.step == best_step + 2 * 5 == rows[-1]["step"], losses
    reason = stopped.stop_reason
    assert reason.startswith("early stopping: val_loss") and f"at step {best_step}," in reason
    assert f"stopped at step {stopped.step}" in reason and f"{losses[best_step]:.6g}" in reason
    summary = json.loads((stopped.run_dir / "summary.json").read_text())
    assert (summary["best_metric"], summary["best_step"]) == ("val_loss", best_step)
    assert summary["best_value"] == losses[best_step]
    record = json.loads((stopped.run_dir / layout.BEST_RECORD).read_text())
    assert record == {
        "metric": "val_loss",
        "value": losses[best_step],
        "step": best_step,
        "checkpoint": f"checkpoints/{layout.step_dir_name(best_step)}",
    }


def test_keep_last_1_still_keeps_the_best_checkpoint_beside_the_latest(stopped):
    best_step = json.loads((stopped.run_dir / "summary.json").read_text())["best_step"]
    kept = [p.name for p in layout.complete_steps(stopped.run_dir)]
    assert kept == [layout.step_dir_name(best_step), layout.step_dir_name(stopped.step)]


def _val_loss_of_export(model_dir: Path, cfg) -> float:
    """The validation loss the loop computes, from an exported HF folder: same set, same batches,
    the same loss module (document masking over the packed rows)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    module = CausalLMLoss(model, cfg.data.document_masking, cfg.model.loss_chunk_tokens)
    loader = build_val_loader(
        cfg.data,
        ensure_prepared(cfg.data),
        micro_batch_size=8,
        dp_rank=0,
        dp_size=1,
        num_samples=cfg.trainer.eval_batches * cfg.trainer.global_batch_size,
    )
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            total += float(
                module(**{k: batch[k] for k in ("input_ids", "labels", "position_ids", "document_ids")})
            )
            count += int((batch["labels"] != IGNORE_INDEX).sum())
    return total / count


def test_export_best_is_the_best_checkpoint_and_its_val_loss_is_the_logged_best(stopped, workdir):
    out = workdir / "export_best"
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "export_hf.py"), str(stopped.run_dir), str(out), "--best"],
        env=os.environ,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config(overrides(workdir, "full"))
    summary = json.loads((stopped.run_dir / "summary.json").read_text())
    assert _val_loss_of_export(out, cfg) == pytest.approx(summary["best_value"], rel=1e-5)
    # Negative control: the latest checkpoint's export is another model with a worse loss.
    latest = export_hf(stopped.run_dir, workdir / "export_latest")
    assert _val_loss_of_export(latest, cfg) > summary["best_value"] + 1e-3


def test_kill_in_the_middle_of_the_patience_window_resumes_to_the_same_stop_step(
    stopped, workdir, monkeypatch
):
    """SIGTERM two steps after the first evaluation without an improvement: the checkpoint carries
    one spent evaluation of patience, so the resumed run stops at the same step (a counter that
    restarted would run one more evaluation)."""
    import llmtrain.train.loop as loop

    best_step = json.loads((stopped.run_dir / "summary.json").read_text())["best_step"]
    kill_at = best_step + 5 + 2
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
    assert second.exit_code == EXIT_OK
    assert (second.step, second.stop_reason) == (stopped.step, stopped.stop_reason)
    # A rerun of a run that stopped early stops again at once instead of training on.
    third = train(load_config(overrides(workdir, "killed")))
    assert (third.step, third.stop_reason, third.exit_code) == (stopped.step, stopped.stop_reason, EXIT_OK)


def test_an_early_stopping_metric_that_is_never_logged_fails_at_the_first_evaluation(workdir):
    cfg = load_config(
        overrides(workdir, "unknown_metric", **{"trainer.early_stopping.metric": "val_macro_f1"})
    )
    with pytest.raises(
        ConfigError, match=r"trainer.early_stopping.metric: 'val_macro_f1' .* val_loss, val_ppl"
    ):
        train(cfg)
    assert not layout.complete_steps(workdir / "unknown_metric"), "nothing trained, nothing saved"


def test_export_best_of_a_run_that_tracked_no_best_says_how_to_track_one(stopped, workdir):
    run = train(
        load_config(
            overrides(workdir, "no_best", **{"trainer.early_stopping.metric": "null", "trainer.max_steps": 2})
        )
    )
    with pytest.raises(CheckpointError, match="trainer.early_stopping.metric"):
        export_hf(run.run_dir, workdir / "no_best_export", best=True)


def test_a_crash_while_saving_a_new_best_leaves_the_previous_best_exportable_and_the_resume_agrees(
    stopped, workdir
):
    """Killed (SIGKILL, every rank) after writing the shards of the best evaluation's checkpoint
    and before its commit: `latest` and the best are still the previous improvement's, --best
    exports it, and the resumed run ends exactly as the uninterrupted one."""
    from launcher import launch

    from llmtrain.checkpoint.io import FAULT_AFTER_SHARDS_ENV

    losses = [(r["step"], r["val_loss"]) for r in val_rows(stopped.run_dir)]
    improving = [s for i, (s, v) in enumerate(losses) if all(v < w for _, w in losses[:i])]
    crash_at, previous = improving[-1], improving[-2]
    run_dir = workdir / "crashed"
    args = [str(a) for a in overrides(workdir, "crashed")]
    proc = launch("forked", 1, args, env={FAULT_AFTER_SHARDS_ENV: str(crash_at)}, check=False)
    assert proc.returncode != 0 and layout.latest_checkpoint(run_dir).name == layout.step_dir_name(previous)
    assert layout.best_checkpoint(run_dir).name == layout.step_dir_name(previous)
    exported = export_hf(run_dir, workdir / "crashed_best", best=True)
    assert (exported / "model.safetensors").is_file()
    resumed = train(load_config(overrides(workdir, "crashed")))
    assert (resumed.step, resumed.stop_reason) == (stopped.step, stopped.stop_reason)
