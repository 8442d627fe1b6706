"""Two ranks (DDP, forked as torchrun would start them): one W&B run for the job, written by global rank 0 only."""

from __future__ import annotations

import json

import pytest
from launcher import REPO, launch
from wandb_records import offline_runs


@pytest.mark.slow
def test_two_ranks_create_exactly_one_wandb_run_inside_the_run_dir(tmp_path, tiny_run, wandb_offline):
    repo_had_wandb_dir = (REPO / "wandb").exists()
    run_dir = tmp_path / "run"
    launch(
        "forked",
        2,
        tiny_run(
            run_dir, "logger=wandb", "logger.mode=offline", "strategy=single", "trainer.micro_batch_size=2"
        ),
    )

    segments = sorted((run_dir / "wandb").glob("*run-*"))
    assert [p.name.startswith("offline-run-") for p in segments] == [True]
    (run,) = offline_runs(run_dir)
    assert run.config["environment"]["world_size"] == 2
    assert json.loads((run_dir / "environment.json").read_text())["world_size"] == 2
    assert run.steps == list(range(0, 7))
    # W&B wrote under run.dir only, not into the launch directory (the repository).
    assert (REPO / "wandb").exists() == repo_had_wandb_dir
