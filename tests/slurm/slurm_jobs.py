"""Submit the repository's sbatch scripts to the local SLURM cluster (.ci/slurm-up) and watch them.

Jobs run the same scripts a user submits, shrunk to 2 CPU tasks on this machine through sbatch's
own options (no test-only script variant); tests read what the jobs wrote (log, metrics.jsonl,
checkpoints) and what the controller reports (`scontrol show job`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "slurm"

# Two tasks of one CPU each, no GPUs; the time limit keeps a hung job from holding the test cluster.
CPU_TASKS = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0", "--time=15"]
# Per-node launcher scripts: one task owning both CPUs, NPROC_PER_NODE=2 ranks under it.
CPU_NODE = ["--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=2", "--gpus-per-node=0", "--time=15"]

STEPS = 16
SAVE_EVERY = 4
SUBMITTED: list[str] = []  # every job id submitted by this session


def tiny_overrides(cache_dir: Path, **extra: object) -> list[str]:
    """16 steps of the tiny model, a checkpoint every 4. Global batch 32 makes a step take ~0.4 s
    here, so a signal sent after step 4 lands well before the end."""
    base = {
        "trainer.device": "cpu",
        "trainer.max_steps": STEPS,
        "trainer.log_every": 1,
        "trainer.save_every": SAVE_EVERY,
        "trainer.eval_every": 0,
        "trainer.global_batch_size": 32,
        "trainer.micro_batch_size": 4,
        "data.seq_len": 64,
        "data.synthetic_docs": 300,
        "data.loader_workers": 0,
        "data.cache_dir": cache_dir,
        "dist.timeout_s": 30,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The submitting environment (sbatch exports it to the job: this venv's python) minus any
    SLURM_* of an enclosing job, which would confuse sbatch."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.pop("LLMTRAIN_FAULT_CHECKPOINT_AFTER_SHARDS", None)
    env.update(extra or {})
    return env


@dataclass
class Job:
    id: str
    workdir: Path  # the job's working directory (--chdir): logs/ and runs/ are relative to it

    @property
    def log(self) -> Path:
        return self.workdir / "logs" / f"llmtrain-{self.id}.out"

    @property
    def default_run_dir(self) -> Path:
        return self.workdir / "runs" / "default" / f"slurm-{self.id}"

    def info(self) -> dict[str, str]:
        out = subprocess.run(
            ["scontrol", "show", "job", "--oneliner", self.id], capture_output=True, text=True
        ).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def queued(self) -> bool:
        out = subprocess.run(["squeue", "-h", "-j", self.id, "-o", "%T"], capture_output=True, text=True)
        return bool(out.stdout.strip())

    def wait_done(self, timeout: float = 480) -> dict[str, str]:
        """Block until the job left the queue; returns its final record (JobState, ExitCode, ...)."""
        deadline = time.time() + timeout
        while self.queued():
            if time.time() > deadline:
                subprocess.run(["scancel", self.id])
                raise AssertionError(f"job {self.id} still queued after {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.5)
        return self.info()

    def wait_state(self, state: str, timeout: float = 120) -> dict[str, str]:
        deadline = time.time() + timeout
        while (info := self.info()).get("JobState") != state:
            if time.time() > deadline or not self.queued():  # ended without passing through `state`
                raise AssertionError(
                    f"job {self.id} never reached {state} (now {info.get('JobState')}):\n{self.tail()}"
                )
            time.sleep(0.2)
        return info

    def pids(self, globalid: int) -> list[int]:
        """Task leader pids of step tasks with this global rank (`scontrol listpids`, this node)."""
        out = subprocess.run(["scontrol", "listpids", self.id], capture_output=True, text=True).stdout
        rows = [line.split() for line in out.splitlines()[1:]]
        return [int(r[0]) for r in rows if len(r) == 5 and r[2] != "batch" and r[4] == str(globalid)]

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text()[-chars:] if self.log.exists() else f"(no log at {self.log})"


def sbatch(
    script: str, overrides: list[str], workdir: Path, options: list[str], env: dict[str, str] | None = None
) -> Job:
    """`sbatch --chdir=workdir OPTIONS slurm/SCRIPT OVERRIDES`, submitted from the repository root."""
    (workdir / "logs").mkdir(parents=True, exist_ok=True)  # sbatch does not create it
    done = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={workdir}", *options, str(SLURM_DIR / script), *overrides],
        cwd=REPO,
        env=job_env(env),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"sbatch {script} failed: {done.stderr}"
    job = Job(done.stdout.strip().split(";")[0], workdir)
    SUBMITTED.append(job.id)
    return job


def cancel_leftovers() -> None:
    """scancel whatever a failed test left queued, so it does not hold the cluster."""
    if SUBMITTED:
        subprocess.run(["scancel", *SUBMITTED], capture_output=True)


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def step_losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}


def wait_for_step(job: Job, run_dir: Path, step: int, timeout: float = 480) -> None:
    """Until metrics.jsonl shows `step` (the job must still be running, or the test is moot)."""
    deadline = time.time() + timeout
    while not any(m.get("step", 0) >= step for m in read_metrics(run_dir)):
        assert job.queued(), f"job {job.id} ended before step {step}:\n{job.tail()}"
        assert time.time() < deadline, (
            f"job {job.id} did not reach step {step} in {timeout:.0f}s:\n{job.tail()}"
        )
        time.sleep(0.1)


def slurm_available() -> bool:
    return shutil.which("sbatch") is not None
