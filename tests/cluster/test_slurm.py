"""llmtrain.cluster.slurm without a cluster: which variables make a rank, the rendezvous address and
port, and when a stopped job asks to be requeued (against a stand-in `scontrol`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from llmtrain import dist
from llmtrain.cluster import slurm

STEP_ENV = {
    "SLURM_JOB_ID": "123457",
    "SLURM_STEP_ID": "0",
    "SLURM_JOB_NODELIST": "gpu[07-08,11]",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
    "SLURM_PROCID": "3",
    "SLURM_NTASKS": "16",
    "SLURM_LOCALID": "3",
    "SLURM_NODEID": "0",
    "SLURM_RESTART_COUNT": "1",
}


RENDEZVOUS_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch) -> pytest.MonkeyPatch:
    """No SLURM or rendezvous variables, and any the code under test ADDS are removed afterwards.

    `delenv` alone records only keys that exist; `fill_rendezvous_env` writes MASTER_ADDR/PORT into
    os.environ, and a leak from here once gave every later sbatch job in the session the same port.
    """
    for key in [k for k in os.environ if k.startswith("SLURM_")] + list(RENDEZVOUS_KEYS):
        monkeypatch.setenv(key, "")  # recorded, so teardown restores the original (or absence)
        monkeypatch.delenv(key)
    return monkeypatch


@pytest.mark.parametrize(
    ("node_list", "first"),
    [
        ("vm", "vm"),
        ("gpu[07-08,11],cpu3", "gpu07"),
        ("cpu3,gpu[07-08]", "cpu3"),
        ("rack[1-2]-node[001-004]", "rack1-node001"),
        ("a-b[10,2-3]", "a-b10"),
    ],
)
def test_first_host_is_the_head_of_the_expanded_node_list(node_list, first):
    assert slurm.first_host(node_list) == first
    if shutil.which("scontrol"):  # the same answer as SLURM's own expansion
        shown = subprocess.run(["scontrol", "show", "hostnames", node_list], capture_output=True, text=True)
        assert shown.stdout.split()[0] == first


def test_first_host_of_a_malformed_list_is_an_error():
    with pytest.raises(ValueError, match="node list"):
        slurm.first_host("gpu[07-08")


def test_master_port_is_stable_per_job_and_differs_between_neighbouring_jobs():
    ports = {slurm.master_port(job) for job in range(123_000, 123_100)}
    assert len(ports) == 100 and all(10_000 <= p < 30_000 for p in ports)
    assert slurm.master_port(123_457) == slurm.master_port(123_457)


def test_srun_task_gets_ranks_and_rendezvous_from_slurm(clean_env):
    for key, value in STEP_ENV.items():
        clean_env.setenv(key, value)
    assert dist.env_ranks() == (3, 16, 3)
    slurm.fill_rendezvous_env()
    # The step's first node (not the job's third), the job's port.
    assert os.environ["MASTER_ADDR"] == "gpu07"
    assert os.environ["MASTER_PORT"] == str(slurm.master_port(123457))
    task = slurm.current_task()
    assert task is not None and task.restart_count == 1 and task.num_nodes == 1


def test_batch_shell_is_one_process_even_though_it_carries_the_job_task_count(clean_env):
    """The batch script has SLURM_PROCID=0 and SLURM_NTASKS=N but no step: `python train.py` there
    must run alone, not wait for N-1 peers that will never come."""
    for key, value in STEP_ENV.items():
        if key != "SLURM_STEP_ID":
            clean_env.setenv(key, value)
    assert dist.env_ranks() == (0, 1, 0)
    slurm.fill_rendezvous_env()
    assert "MASTER_ADDR" not in os.environ


def test_a_launcher_rendezvous_wins_over_slurm(clean_env):
    for key, value in {
        **STEP_ENV,
        "RANK": "5",
        "WORLD_SIZE": "32",
        "MASTER_ADDR": "head",
        "MASTER_PORT": "29500",
    }.items():
        clean_env.setenv(key, value)
    slurm.fill_rendezvous_env()
    assert dist.env_ranks()[:2] == (5, 32)
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("head", "29500")


def test_shell_exports_match_what_the_ranks_derive(clean_env):
    env = {**os.environ, "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "n[3-4]"}
    out = subprocess.run(
        ["python", "-m", "llmtrain.cluster.slurm"], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"export MASTER_ADDR=n3 MASTER_PORT={slurm.master_port(77)}"


def _fake_scontrol(tmp_path: Path, show: str, requeue_rc: int = 0) -> Path:
    """An `scontrol` that prints `show` for `show job` and records `requeue` calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = show ]; then echo "{show}"; exit 0; fi\n'
        f'echo "$@" >> {tmp_path}/calls\n'
        f"exit {requeue_rc}\n"
    )
    script.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize(
    ("show", "requeue_rc", "expected"),
    [
        ("JobId=42 JobName=llmtrain Requeue=1 Restarts=0 BatchFlag=1", 0, True),
        ("JobId=42 JobName=llmtrain Requeue=0 Restarts=0 BatchFlag=1", 0, False),  # --no-requeue
        ("JobId=42 JobName=interactive Requeue=1 Restarts=0 BatchFlag=0", 0, False),  # salloc/srun
        ("JobId=42 JobName=llmtrain Requeue=1 Restarts=0 BatchFlag=1", 1, False),  # refused
    ],
)
def test_requeue_only_for_a_requeueable_batch_job(clean_env, tmp_path, show, requeue_rc, expected):
    clean_env.setenv("PATH", f"{_fake_scontrol(tmp_path, show, requeue_rc)}:{os.environ['PATH']}")
    clean_env.setenv("SLURM_JOB_ID", "42")
    assert slurm.requeue_current_job() is expected
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    asked = "Requeue=1" in show and "BatchFlag=1" in show
    assert calls == (["requeue 42"] if asked else [])


def test_no_requeue_outside_slurm(clean_env):
    assert slurm.requeue_current_job() is False
