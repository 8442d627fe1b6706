"""Overrides for the tiny in-process runs of the checkpoint tests (constant LR after warmup, so a
run resumed with a larger `trainer.max_steps` follows the learning rates of an uninterrupted one)."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_overrides(tmp: Path, run: str, **extra: object) -> list[str]:
    base = {
        "run.dir": tmp / run,
        "data.cache_dir": tmp / "cache",
        "data.seq_len": 64,
        "data.synthetic_docs": 300,
        "data.loader_workers": 0,
        "trainer.device": "cpu",
        "trainer.max_steps": 6,
        "trainer.global_batch_size": 8,
        "trainer.micro_batch_size": 4,
        "trainer.log_every": 1,
        "trainer.eval_every": 0,
        "trainer.save_every": 3,
        "sched": "constant",
        "sched.warmup_steps": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def losses(run_dir: Path) -> dict[int, float]:
    """Loss by step from metrics.jsonl; a step logged twice (before and after a resume) keeps the later."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in rows if "loss" in m}
