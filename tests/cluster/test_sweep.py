"""llmtrain.cluster.sweep without a cluster: Hydra sweep syntax becomes one point per combination,
each with its own run directory, validated before anything is queued."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtrain.cluster import sweep
from llmtrain.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "slurm" / "train.sbatch"


def test_product_of_sweeps_keeps_fixed_overrides_in_order():
    points = sweep.expand(["model=small", "optim.lr=1e-4,3e-4", "trainer.seed=range(1,3)"], multirun=True)
    assert [p.name for p in points] == [
        "optim.lr=0.0001,trainer.seed=1",
        "optim.lr=0.0001,trainer.seed=2",
        "optim.lr=0.0003,trainer.seed=1",
        "optim.lr=0.0003,trainer.seed=2",
    ]
    assert points[1].overrides == ["model=small", "optim.lr=0.0001", "trainer.seed=2"]


def test_quoted_commas_are_not_a_sweep_and_a_sweep_without_m_is_refused():
    [point] = sweep.expand(["data.path='a,b.txt'"], multirun=False)
    assert point.overrides == ["data.path='a,b.txt'"]
    with pytest.raises(ConfigError, match="add -m"):
        sweep.expand(["optim.lr=1e-4,3e-4"], multirun=False)


def test_each_point_gets_its_own_run_dir_that_hydra_reads_back(tmp_path):
    points = sweep.submit(SCRIPT, ["optim.lr=1e-4,3e-4"], True, [f"--chdir={tmp_path}"], dry_run=True)
    dirs = [load_config(p.overrides).run.dir for _, p in points]
    assert len(set(dirs)) == 2
    for run_dir, lr in zip(dirs, ("0.0001", "0.0003")):
        assert Path(run_dir).parent.parent == tmp_path / "runs" / "default"
        assert Path(run_dir).parent.name.startswith("sweep-") and Path(run_dir).name == f"optim.lr={lr}"


def test_a_typo_in_any_point_fails_before_submission(tmp_path):
    with pytest.raises(ConfigError, match="did you mean optim.lr"):
        sweep.submit(SCRIPT, ["optim.lrr=1e-4,3e-4"], True, [f"--chdir={tmp_path}"], dry_run=True)
    with pytest.raises(ConfigError, match="sweep point model=nope"):
        sweep.submit(SCRIPT, ["model=tiny,nope"], True, [f"--chdir={tmp_path}"], dry_run=True)
