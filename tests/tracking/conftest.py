"""Tiny training runs and an offline, sandboxed W&B for the tracking tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

Overrides = Callable[..., list[str]]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One tokenized synthetic corpus for every run in these tests."""
    return tmp_path_factory.mktemp("tracking-data-cache")


@pytest.fixture
def tiny_run(data_cache) -> Overrides:
    """`tiny_run(run_dir, "key=value", ...)`: overrides for a seconds-long run in `run_dir`; a given
    key replaces the default one."""

    def overrides(run_dir: Path, *extra: str) -> list[str]:
        base: dict[str, object] = {
            "run.dir": run_dir,
            "data.cache_dir": data_cache,
            "data.seq_len": 64,
            "data.synthetic_docs": 200,
            "data.loader_workers": 0,
            "trainer.max_steps": 6,
            "trainer.log_every": 1,
            "trainer.eval_every": 3,
            "trainer.eval_batches": 2,
            "trainer.global_batch_size": 4,
            "trainer.micro_batch_size": 4,
            "sched.warmup_steps": 1,
        }
        base.update(override.split("=", 1) for override in extra)
        return [f"{k}={v}" for k, v in base.items()]

    return overrides


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch) -> Path:
    """W&B offline, with its caches and settings in tmp_path so tests touch nothing outside it."""
    home = tmp_path / "wandb-home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return home
