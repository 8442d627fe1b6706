"""The sbatch scripts in slurm/ on a real (one-node) SLURM cluster: 2-task jobs train to completion
under ZeRO-2 and FSDP with the log and run directory where the README says; the per-node torchrun and
deepspeed scripts reproduce them; USR1 checkpoints, requeues and resumes with the losses of an
uninterrupted run; a rank killed with SIGKILL fails the job quickly and a rerun resumes; a crash
between the shard writes and the commit leaves the previous checkpoint as `latest`; a sweep submits
one job per point, each with its own run directory.

Each scenario is a function that drives its jobs from submission to the end and returns what it saw;
all of them start together in threads (the partition runs four jobs at once, the rest queue), and
the tests assert on their results. That keeps the module to a few minutes on two cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from slurm_jobs import (
    CPU_NODE,
    CPU_TASKS,
    REPO,
    SAVE_EVERY,
    STEPS,
    SUBMITTED,
    Job,
    cancel_leftovers,
    job_env,
    read_metrics,
    sbatch,
    step_losses,
    tiny_overrides,
    wait_for_step,
)

from llmtrain.checkpoint import layout
from llmtrain.config import from_yaml

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

# Different strategies (and launchers) reproduce each other's losses up to reduction order.
LOSS_ATOL = 1e-4
FAULT_STEP = 8


# --- scenarios: each drives real jobs and returns its observations --------------------------------


def completed(workdir: Path, script: str, strategy: str, options: list[str], **env: str) -> dict[str, Any]:
    """One job left alone; its run directory is the default one, keyed by the job id."""
    job = sbatch(
        script,
        tiny_overrides(workdir / "cache" / script / strategy, strategy=strategy),
        workdir,
        options,
        env,
    )
    return {"job": job, "final": job.wait_done()}


def preempted(workdir: Path) -> dict[str, Any]:
    """USR1 after the first checkpoint, exactly what `#SBATCH --signal=USR1@300` sends the steps."""
    job = sbatch(
        "train.sbatch", tiny_overrides(workdir / "cache" / "preempt", strategy="zero2"), workdir, CPU_TASKS
    )
    run_dir = job.default_run_dir  # keyed by the job id, which the requeued job keeps
    wait_for_step(job, run_dir, SAVE_EVERY)
    subprocess.run(["scancel", "--signal=USR1", job.id], check=True)
    requeued = job.wait_state("PENDING")
    stopped_at = layout.read_trainer_state(layout.latest_checkpoint(run_dir))["step"]
    # A requeued job may not start for ~2 minutes (its begin time); start it now. Not in the same
    # second as the requeue, though: slurmd still holds the old incarnation's revoked credential and
    # kills the new one at launch ("Job credential revoked").
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"JobId={job.id}", "StartTime=now"], check=True)
    return {
        "job": job,
        "run_dir": run_dir,
        "requeued": requeued,
        "stopped_at": stopped_at,
        "final": job.wait_done(),
    }


def killed(workdir: Path) -> dict[str, Any]:
    """SIGKILL rank 1 after the first checkpoint; then submit the same command again."""
    run_dir = workdir / "killed"
    overrides = tiny_overrides(workdir / "cache" / "killed", strategy="zero2", **{"run.dir": run_dir})
    job = sbatch("train.sbatch", overrides, workdir, CPU_TASKS)
    wait_for_step(job, run_dir, SAVE_EVERY + 2)
    [rank1] = job.pids(globalid=1)
    os.kill(rank1, signal.SIGKILL)
    killed_at = time.time()
    final = job.wait_done(timeout=120)
    ended_after = time.time() - killed_at
    latest = layout.latest_checkpoint(run_dir)
    rerun = sbatch("train.sbatch", overrides, workdir, CPU_TASKS)
    return {
        "job": job,
        "run_dir": run_dir,
        "final": final,
        "ended_after": ended_after,
        "latest": latest,
        "latest_step": layout.read_trainer_state(latest)["step"],
        "rerun": rerun,
        "rerun_final": rerun.wait_done(),
    }


def crashed_in_checkpoint(workdir: Path) -> dict[str, Any]:
    """Every rank SIGKILLs itself after writing step 8's shards, before the commit; then a rerun."""
    run_dir = workdir / "fault"
    overrides = tiny_overrides(workdir / "cache" / "fault", strategy="zero2", **{"run.dir": run_dir})
    job = sbatch(
        "train.sbatch",
        overrides,
        workdir,
        CPU_TASKS,
        {"LLMTRAIN_FAULT_CHECKPOINT_AFTER_SHARDS": str(FAULT_STEP)},
    )
    final = job.wait_done()
    half = layout.temp_dir_for(run_dir, FAULT_STEP)
    seen = {  # before the rerun changes anything
        "half_has_shards": (half / "model").is_dir() and any((half / "model").iterdir()),
        "half_complete": layout.is_complete(half),
        "step_dir_exists": (run_dir / "checkpoints" / layout.step_dir_name(FAULT_STEP)).exists(),
        "latest_pointer": (run_dir / "checkpoints" / "latest").read_text().strip(),
        "latest": layout.latest_checkpoint(run_dir),
    }
    rerun = sbatch("train.sbatch", overrides, workdir, CPU_TASKS)
    return {
        "job": job,
        "final": final,
        "run_dir": run_dir,
        "half": half,
        **seen,
        "rerun": rerun,
        "rerun_final": rerun.wait_done(),
    }


def swept(workdir: Path) -> dict[str, Any]:
    """`launch/submit.py ... -m optim.lr=1e-4,3e-4`: both points share one data cache, as sweeps do."""
    sweep_dir = workdir / "sweep"
    overrides = tiny_overrides(workdir / "cache" / "sweep", **{"trainer.max_steps": 2})
    done = subprocess.run(
        [
            sys.executable,
            "launch/submit.py",
            f"--sbatch=--chdir={sweep_dir}",
            *(f"--sbatch={o}" for o in CPU_TASKS),
            "slurm/train.sbatch",
            "-m",
            "optim.lr=1e-4,3e-4",
            *overrides,
        ],  # fmt: skip
        cwd=REPO,
        env=job_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    points = {}
    for line in done.stdout.splitlines():
        if line.startswith("job "):
            head, name, run_dir = line.split("\t")
            job = Job(head.split()[1], sweep_dir)
            SUBMITTED.append(job.id)
            points[name] = (job, Path(run_dir))
    return {
        "stdout": done.stdout,
        "sweep_dir": sweep_dir,
        "points": {n: (j, d, j.wait_done()) for n, (j, d) in points.items()},
    }


SCENARIOS: dict[str, Callable[[Path], dict[str, Any]]] = {
    # The timing-sensitive ones first, so they start before the queue fills.
    "preempted": preempted,
    "killed": killed,
    "zero2": lambda wd: completed(wd, "train.sbatch", "zero2", CPU_TASKS),
    "fsdp": lambda wd: completed(wd, "train.sbatch", "fsdp", CPU_TASKS),
    "fault": crashed_in_checkpoint,
    "torchrun": lambda wd: completed(wd, "torchrun.sbatch", "fsdp", CPU_NODE, NPROC_PER_NODE="2"),
    "deepspeed": lambda wd: completed(wd, "deepspeed.sbatch", "zero2", CPU_NODE, NPROC_PER_NODE="2"),
    "sweep": swept,
}


def _needed(request: pytest.FixtureRequest) -> set[str]:
    """Scenarios the selected tests of this module read (`-k usr1` runs two jobs, not all of them):
    a test's parameter names its scenario, else its name does; every test compares with zero2."""
    by_test = {"usr1": "preempted", "sigkill": "killed", "crash": "fault", "sweep": "sweep"}
    needed = {"zero2"}
    for item in request.session.items:
        if item.module is request.module:
            params = getattr(item, "callspec", None)
            needed |= set(params.params.values()) if params else set()
            needed |= {name for key, name in by_test.items() if key in item.name}
    return needed


@pytest.fixture(scope="module")
def scenarios(request, tmp_path_factory, slurm_cluster) -> Iterator[dict[str, Future]]:
    workdir = tmp_path_factory.mktemp("slurm")
    pool = ThreadPoolExecutor(max_workers=len(SCENARIOS))
    futures = {}
    needed = _needed(request)
    for name, scenario in SCENARIOS.items():
        if name in needed:
            futures[name] = pool.submit(scenario, workdir)
            time.sleep(0.5)  # submission order is queue order
    yield futures
    cancel_leftovers()
    pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture(scope="module")
def reference(scenarios) -> dict[int, float]:
    """Losses of the uninterrupted 2-task ZeRO-2 job: what every resumed ZeRO-2 run must reproduce."""
    zero2 = scenarios["zero2"].result()
    assert zero2["final"]["JobState"] == "COMPLETED", zero2["job"].tail()
    losses = step_losses(zero2["job"].default_run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1)), zero2["job"].tail()
    return losses


def assert_resumed_exactly(run_dir: Path, resumed_at: int, reference: dict[int, float]) -> None:
    losses = step_losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1)), "every step logged exactly once"
    after = {s: (losses[s], reference[s]) for s in range(resumed_at + 1, STEPS + 1)}
    assert all(a == b for a, b in after.values()), f"losses after the resume differ: {after}"


# --- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["zero2", "fsdp"])
def test_two_task_job_trains_to_completion_with_log_and_run_dir_where_the_readme_says(
    scenarios, reference, strategy
):
    seen = scenarios[strategy].result()
    job, final = seen["job"], seen["final"]
    assert (final["JobState"], final["ExitCode"]) == ("COMPLETED", "0:0"), job.tail()
    # README: logs/<job name>-<job id>.out and runs/<run.name>/slurm-<job id>/ in the job's directory.
    log = job.workdir / "logs" / f"llmtrain-{job.id}.out"
    run_dir = job.workdir / "runs" / "default" / f"slurm-{job.id}"
    assert f"job {job.id} (llmtrain) restart 0" in log.read_text()
    assert f"run directory: {run_dir}" in log.read_text()
    assert layout.latest_checkpoint(run_dir) == run_dir / "checkpoints" / f"step_{STEPS:06d}"
    state = layout.read_trainer_state(layout.latest_checkpoint(run_dir))
    assert (state["strategy"], state["world_size"]) == (strategy, 2), "two ranks from SLURM_PROCID/NTASKS"
    losses = step_losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1] - 1.0, "it learns"
    assert max(abs(losses[s] - reference[s]) for s in losses) <= LOSS_ATOL


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_per_node_launcher_script_reproduces_the_per_task_job(scenarios, reference, launcher):
    seen = scenarios[launcher].result()
    job = seen["job"]
    assert seen["final"]["JobState"] == "COMPLETED", job.tail()
    assert "rendezvous" in job.log.read_text()
    losses = step_losses(job.default_run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1)), job.tail()
    assert max(abs(losses[s] - reference[s]) for s in losses) <= LOSS_ATOL


def test_usr1_saves_requeues_and_the_restarted_job_resumes_with_identical_losses(scenarios, reference):
    seen = scenarios["preempted"].result()
    job, run_dir, stopped_at = seen["job"], seen["run_dir"], seen["stopped_at"]
    assert seen["requeued"]["Restarts"] == "1", seen["requeued"]
    assert SAVE_EVERY <= stopped_at < STEPS, (
        f"the signal should stop the run mid-way, stopped at {stopped_at}"
    )
    assert (seen["final"]["JobState"], seen["final"]["Restarts"]) == ("COMPLETED", "1"), job.tail()
    log = job.log.read_text()  # --open-mode=append: both incarnations in one file
    assert f"stopped by SIGUSR1 at step {stopped_at}" in log
    assert f"requeueing SLURM job {job.id}" in log
    assert f"job {job.id} (llmtrain) restart 1" in log
    assert f"resumed from {run_dir}/checkpoints/step_{stopped_at:06d} at step {stopped_at}" in log
    assert layout.read_trainer_state(layout.latest_checkpoint(run_dir))["step"] == STEPS
    assert_resumed_exactly(run_dir, stopped_at, reference)
    print(
        f"job {job.id}: stopped by USR1 at step {stopped_at}, requeued, resumed, steps {stopped_at + 1}-{STEPS} equal"
    )


def test_a_rank_killed_with_sigkill_fails_the_job_within_the_timeout_and_a_rerun_resumes(
    scenarios, reference
):
    seen = scenarios["killed"].result()
    job, final = seen["job"], seen["final"]
    assert (final["JobState"], final["Reason"]) == ("FAILED", "NonZeroExitCode"), job.tail()
    # srun --kill-on-bad-exit ends the step at once; dist.timeout_s=30 is the bound without it.
    assert seen["ended_after"] < 30, f"the job took {seen['ended_after']:.1f}s to end after rank 1 died"
    print(
        f"job {job.id}: ended {seen['ended_after']:.1f}s after SIGKILL of rank 1; rerun from step {seen['latest_step']}"
    )
    resumed_at = seen["latest_step"]
    assert resumed_at % SAVE_EVERY == 0 and SAVE_EVERY <= resumed_at < STEPS
    assert seen["rerun_final"]["JobState"] == "COMPLETED", seen["rerun"].tail()
    assert f"resumed from {seen['latest']} at step {resumed_at}" in seen["rerun"].log.read_text()
    assert_resumed_exactly(seen["run_dir"], resumed_at, reference)


def test_crash_between_shard_writes_and_commit_keeps_the_previous_checkpoint_as_latest(scenarios, reference):
    seen = scenarios["fault"].result()
    job = seen["job"]
    assert seen["final"]["JobState"] == "FAILED", job.tail()
    assert "killing this rank before the checkpoint commit" in job.log.read_text()
    # Step 8's shards were written into the temp folder, which was never committed.
    assert seen["half_has_shards"] and not seen["half_complete"] and not seen["step_dir_exists"]
    assert seen["latest_pointer"] == layout.step_dir_name(SAVE_EVERY)
    previous = seen["latest"]
    assert previous.name == layout.step_dir_name(SAVE_EVERY)
    # Loadable: a rerun (without the fault) resumes from it and matches the uninterrupted run.
    assert seen["rerun_final"]["JobState"] == "COMPLETED", seen["rerun"].tail()
    assert f"resumed from {previous} at step {SAVE_EVERY}" in seen["rerun"].log.read_text()
    assert_resumed_exactly(seen["run_dir"], SAVE_EVERY, reference)
    assert not seen["half"].exists(), "the next commit cleans up the stale temp folder"


def test_two_point_sweep_submits_two_jobs_with_separate_run_dirs(scenarios):
    seen = scenarios["sweep"].result()
    points, sweep_dir = seen["points"], seen["sweep_dir"]
    assert set(points) == {"optim.lr=0.0001", "optim.lr=0.0003"}, seen["stdout"]
    assert len({job.id for job, _, _ in points.values()}) == 2
    assert len({run_dir for _, run_dir, _ in points.values()}) == 2
    for name, (job, run_dir, final) in points.items():
        assert final["JobState"] == "COMPLETED", job.tail()
        assert run_dir.parent.parent == sweep_dir / "runs" / "default" and run_dir.name == name
        assert from_yaml(run_dir / "config.yaml").optim.lr == float(name.split("=")[1])
        assert [m["step"] for m in read_metrics(run_dir) if "loss" in m] == [1, 2]
    record = json.loads((run_dir.parent / "sweep.json").read_text())
    assert sorted(p["job_id"] for p in record["points"]) == sorted(job.id for job, _, _ in points.values())
