"""Real training runs on a three-source mixture (tinyshakespeare 0.5, c4_demo 0.3, alpaca's replies
0.2): tokens per source and `val_loss/<source>` in metrics.jsonl and the offline W&B run, and the
same shares and losses after a resume at step 50 on two ranks instead of one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from launcher import launch, read_metrics, step_losses
from wandb_records import offline_runs

pytestmark = pytest.mark.slow

SOURCES = {"shakespeare": 0.5, "c4": 0.3, "alpaca": 0.2}
STEPS, RESUME_AT, EVAL_EVERY = 60, 50, 30
GLOBAL, SEQ = 8, 64
# fp32 on CPU: one rank against two differs only in the order of sums (see test_fsdp.py).
LOSS_ATOL = 2e-5


def _args(tmp: Path, run: str, **extra: object) -> list[str]:
    base = {
        "data": "mixture_demo",
        # The byte tokenizer keeps the tiny model tiny (the sampler tests use the Llama 2 vocab).
        "data.tokenizer": "byte",
        # FSDP reshards its checkpoint to another world size (single refuses to).
        "strategy": "fsdp",
        "run.dir": tmp / run,
        "data.cache_dir": tmp / "cache",
        "data.seq_len": SEQ,
        "data.loader_workers": 0,
        "trainer.max_steps": STEPS,
        "trainer.global_batch_size": GLOBAL,
        "trainer.micro_batch_size": 2,
        "trainer.log_every": 1,
        "trainer.eval_every": EVAL_EVERY,
        "trainer.eval_batches": 1,
        "trainer.save_every": RESUME_AT,
        "trainer.device": "cpu",
        "sched": "constant",
        "sched.warmup_steps": 2,
        "logger": "wandb",
        "logger.mode": "offline",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _wandb_env(tmp: Path) -> dict[str, str]:
    home = tmp / "wandb-home"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        env[var] = str(home / var.lower())
    os.environ.pop("WANDB_API_KEY", None)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """`full`: 60 steps on one process. `resumed`: 50 steps on one process, then resumed from its
    step-50 checkpoint for the last 10 on two ranks (torchrun, FSDP2 over gloo)."""
    tmp = tmp_path_factory.mktemp("mixture-runs")
    env = _wandb_env(tmp)
    launch("forked", 1, _args(tmp, "full"), env=env)
    launch("forked", 1, _args(tmp, "resumed", **{"trainer.max_steps": RESUME_AT}), env=env)
    launch("forked", 2, _args(tmp, "resumed"), env=env)
    return {"full": tmp / "full", "resumed": tmp / "resumed"}


def _source_tokens(run_dir: Path) -> dict[int, dict[str, int]]:
    return {
        m["step"]: {s: m[f"tokens/{s}"] for s in SOURCES} for m in read_metrics(run_dir) if "tokens/c4" in m
    }


def test_token_shares_follow_weights_and_survive_resume_on_two_ranks(runs):
    full, resumed = _source_tokens(runs["full"]), _source_tokens(runs["resumed"])
    assert sorted(full) == list(range(1, STEPS + 1))
    # 60 steps x 8 windows x 64 tokens: 240 / 144 / 96 windows, exactly the weights.
    assert full[STEPS] == {s: round(w * STEPS * GLOBAL) * SEQ for s, w in SOURCES.items()}
    for step in (10, 20, 30, 40, 50, 60):
        total = sum(full[step].values())
        assert all(abs(full[step][s] / total - w) < 0.01 for s, w in SOURCES.items()), (step, full[step])
    assert {s: resumed[s] for s in range(RESUME_AT + 1, STEPS + 1)} == {
        s: full[s] for s in range(RESUME_AT + 1, STEPS + 1)
    }


def test_resume_at_step_50_on_two_ranks_gives_the_same_losses(runs):
    full, resumed = step_losses(runs["full"]), step_losses(runs["resumed"])
    assert sorted(resumed) == list(range(1, STEPS + 1)), "every step logged exactly once"
    assert all(resumed[s] == full[s] for s in range(1, RESUME_AT + 1)), "one process: bitwise equal"
    diffs = {s: abs(resumed[s] - full[s]) for s in range(RESUME_AT + 1, STEPS + 1)}
    assert max(diffs.values()) <= LOSS_ATOL, diffs
    assert full[STEPS] < full[1] - 1.0, "it learns"


def test_val_loss_per_source_at_each_evaluation_in_metrics_and_wandb(runs):
    evals = [m for m in read_metrics(runs["full"]) if "val_loss" in m]
    assert [m["step"] for m in evals] == [0, 30, 60]
    for m in evals:
        per_source = [m[f"val_loss/{s}"] for s in SOURCES]
        assert all(v > 0 for v in per_source)
        # The mixture's val_loss lies among its sources' (a weighted mix of their windows).
        assert min(per_source) <= m["val_loss"] <= max(per_source)
    assert len({round(evals[-1][f"val_loss/{s}"], 3) for s in SOURCES}) == 3, "each source its own loss"

    (run,) = offline_runs(runs["full"])
    by_step = {h["_step"]: h for h in run.history}
    for m in evals:
        for s in SOURCES:
            assert by_step[m["step"]][f"val_loss/{s}"] == m[f"val_loss/{s}"]
    assert by_step[STEPS]["tokens/alpaca"] == 96 * SEQ
