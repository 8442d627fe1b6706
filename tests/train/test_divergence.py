"""A diverging run (every step non-finite from some step on) ends with its own exit code, keeps the
last finite checkpoint as `latest` through retention, and says why in the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launcher import REPO, launch

from llmtrain.checkpoint import layout
from llmtrain.train.loop import EXIT_DIVERGED

FAULT_SCRIPT = REPO / "tests" / "strategy" / "fsdp_faulty_train.py"
FIRST_BAD = 6  # steps 6, 7, 8 are non-finite: the limit of 3 is reached at step 8


def _args(run_dir: Path, cache: Path) -> list[str]:
    base = {
        "run.dir": run_dir,
        "data.cache_dir": cache,
        "data.seq_len": 64,
        "data.synthetic_docs": 300,
        "data.loader_workers": 0,
        "trainer.device": "cpu",
        "trainer.max_steps": 12,
        "trainer.global_batch_size": 8,
        "trainer.micro_batch_size": 4,
        "trainer.log_every": 1,
        "trainer.eval_every": 0,
        "trainer.save_every": 2,
        "trainer.keep_last": 1,
        "trainer.max_nonfinite_steps": 3,
        "sched": "constant",
        "sched.warmup_steps": 2,
    }
    return [f"{k}={v}" for k, v in base.items()]


@pytest.mark.slow
def test_diverged_run_exits_nonzero_and_keeps_the_last_finite_checkpoint_as_latest(tmp_path):
    run_dir = tmp_path / "run"
    proc = launch(
        "forked",
        1,
        _args(run_dir, tmp_path / "cache"),
        script=FAULT_SCRIPT,
        env={"FAULT": "inf_from", "FAULT_STEP": str(FIRST_BAD)},
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_DIVERGED, out[-4000:]

    saved = sorted(p.name for p in layout.complete_steps(run_dir))
    # keep_last=1 would have left only step 6 (saved one step into the streak): step 4 is the
    # newest finite checkpoint and retention kept it; nothing was saved at or after step 8.
    assert saved == [layout.step_dir_name(4), layout.step_dir_name(6)], saved
    assert layout.latest_checkpoint(run_dir) == layout.checkpoints_dir(run_dir) / layout.step_dir_name(4)
    latest = layout.read_meta(layout.latest_checkpoint(run_dir))
    assert latest.finite and latest.trainer["nonfinite_streak"] == 0
    streak_ckpt = layout.read_meta(layout.checkpoints_dir(run_dir) / layout.step_dir_name(6))
    assert not streak_ckpt.finite and streak_ckpt.trainer["nonfinite_streak"] == 1

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 8
    assert "diverged: 3 consecutive non-finite steps" in summary["stop"], summary
    assert summary["checkpoint"].endswith(layout.step_dir_name(4))
