"""Comparing runs from their run dirs alone: differing config keys, metrics, a PNG of the curves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from launcher import REPO

from llmtrain.config import load_config, to_yaml
from llmtrain.tracking.compare import compare_table, load_run, run_stats
from llmtrain.train.loop import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fake_run(run_dir: Path, overrides: list[str], metrics: list[dict]) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(load_config(overrides)))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run_dir


def test_run_stats_are_final_and_best_of_what_metrics_jsonl_holds(tmp_path):
    run = load_run(
        _fake_run(
            tmp_path / "a",
            [],
            [
                {"step": 0, "val_loss": 5.0},
                {"step": 1, "loss": 4.0, "tokens": 100, "tokens_per_sec": 10.0},
                {"step": 2, "loss": 2.0, "tokens": 200, "tokens_per_sec": 30.0},
                {"step": 2, "val_loss": 3.0},
                {"step": 3, "loss": 2.5, "tokens": 300, "tokens_per_sec": 50.0},
                {"step": 3, "val_loss": 3.5},
                {"step": 4, "loss": None, "tokens": 400, "tokens_per_sec": 70.0},  # diverged: null
            ],
        )
    )
    assert run_stats(run) == {
        "final loss": 2.5,
        "best loss": 2.0,
        "final val_loss": 3.5,
        "best val_loss": 3.0,
        "tokens": 400,
        "steps": 4,
        "tokens/s": 50.0,  # mean without the first interval (startup)
    }


def test_table_lists_only_the_config_keys_that_differ_and_not_run_dir(tmp_path):
    a = _fake_run(tmp_path / "a", ["optim.lr=1e-3"], [{"step": 1, "loss": 3.0}])
    b = _fake_run(tmp_path / "b", ["optim.lr=3e-4", "model=small"], [{"step": 1, "loss": 2.0}])
    table = compare_table([load_run(a), load_run(b)])
    config_rows = {line.split()[0] for line in table.split("\n\n")[0].splitlines()[2:]}
    assert "optim.lr" in config_rows and "model.name" in config_rows and "model.hidden_size" in config_rows
    assert "run.dir" not in config_rows and "trainer.max_steps" not in config_rows


def test_a_missing_run_dir_is_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_run(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("compare")
    common = [
        f"data.cache_dir={root / 'cache'}",
        "data.seq_len=64",
        "data.synthetic_docs=200",
        "data.loader_workers=0",
        "trainer.max_steps=4",
        "trainer.log_every=1",
        "trainer.eval_every=2",
        "trainer.eval_batches=2",
        "trainer.global_batch_size=4",
        "trainer.micro_batch_size=4",
        "sched.warmup_steps=1",
    ]
    return [
        train(load_config([*common, f"run.dir={root / name}", f"optim.lr={lr}"])).run_dir
        for name, lr in (("lr_high", "3e-3"), ("lr_low", "1e-4"))
    ]


def test_compare_script_prints_differing_overrides_and_metrics_and_writes_a_png(two_runs, tmp_path):
    png = tmp_path / "loss.png"
    out = subprocess.run(
        [sys.executable, str(REPO / "launch" / "compare.py"), *map(str, two_runs), "--plot", str(png)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    lines = out.splitlines()
    header = lines[0].split()
    config_row = next(line for line in lines if line.startswith("optim.lr"))
    assert header == ["config", "lr_high", "lr_low"]
    assert config_row.split() == ["optim.lr", "0.003", "0.0001"]
    for run_dir in two_runs:
        stats = run_stats(load_run(run_dir))
        assert stats["steps"] == 4 and stats["tokens"] == 4 * 4 * 64
    metric_rows = {line.split("  ")[0]: line for line in lines}
    for row in ("final loss", "best loss", "final val_loss", "best val_loss", "tokens", "steps", "tokens/s"):
        assert row in metric_rows, out
    assert metric_rows["steps"].split()[1:] == ["4", "4"]
    losses = [f"{load_run(d).final('loss'):.4g}" for d in two_runs]
    assert metric_rows["final loss"].split()[2:] == losses

    assert png.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(png)
    assert image.shape[:2] == (500, 800)
    # Two coloured curves on a white canvas: far from a blank image.
    assert np.unique(image.reshape(-1, image.shape[-1]), axis=0).shape[0] > 50
