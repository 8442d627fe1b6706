"""SLURM: which task this process is, where rank 0 listens, and requeueing after the warning signal.

`srun python launch/train.py` starts one process per GPU with no launcher in between, so the
process group has to be formed from SLURM's own variables: ranks from SLURM_PROCID/SLURM_NTASKS/
SLURM_LOCALID (read by `llmtrain.dist.env_ranks`), and MASTER_ADDR/MASTER_PORT from here: the first
host of the step's node list (where task 0 runs under SLURM's block and cyclic distributions) and a
port derived from the job id, so two jobs sharing a node never pick the same one and a requeued job
(same id) finds the same one again.

Preemption: the sbatch scripts ask for `--signal=USR1@<seconds>` (a warning before the time limit)
and `--requeue`. On USR1 the loop finishes its step, all ranks agree, a checkpoint is written, and
rank 0 calls `requeue_current_job()`; the restarted job keeps its id, so it finds its run directory
(`runs/<name>/slurm-<job id>`) and resumes from `latest`. SIGTERM (scancel, or preemption that
SLURM requeues by itself) saves and stops without a self-requeue: a user's `scancel` must end the
job, not bring it back.

`python -m llmtrain.cluster.slurm` prints `export MASTER_ADDR=... MASTER_PORT=...` for the sbatch
scripts that start one torchrun / deepspeed per node, so both forms derive the same address.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import MutableMapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Below Linux's ephemeral range (32768-60999), so an outgoing connection never holds our port.
PORT_BASE = 10000
PORT_SPAN = 20000


@dataclass(frozen=True)
class SlurmTask:
    """This process as SLURM describes it inside an `srun` step."""

    job_id: int
    node_list: str
    num_nodes: int
    procid: int
    ntasks: int
    localid: int
    node_id: int
    cpus_per_task: int | None
    restart_count: int


def in_srun_step(env: MutableMapping[str, str] = os.environ) -> bool:
    """True inside a job step. The batch shell also carries SLURM_PROCID=0 and SLURM_NTASKS=N (the
    job's task count) but is one process: trusting those there would wait forever for N-1 peers."""
    return bool(env.get("SLURM_JOB_ID")) and bool(env.get("SLURM_STEP_ID"))


def current_task(env: MutableMapping[str, str] = os.environ) -> SlurmTask | None:
    """This process's SLURM task, or None outside an `srun` step."""
    if not in_srun_step(env):
        return None
    cpus = env.get("SLURM_CPUS_PER_TASK")
    return SlurmTask(
        job_id=int(env["SLURM_JOB_ID"]),
        # The step's nodes, which may be a subset of the job's (an srun with --nodes).
        node_list=env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", ""),
        num_nodes=int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or 1),
        procid=int(env.get("SLURM_PROCID", 0)),
        ntasks=int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1),
        localid=int(env.get("SLURM_LOCALID", 0)),
        node_id=int(env.get("SLURM_NODEID", 0)),
        cpus_per_task=int(cpus) if cpus else None,
        restart_count=int(env.get("SLURM_RESTART_COUNT", 0)),
    )


def first_host(node_list: str) -> str:
    """The first host of a SLURM host list: `gpu[07-08,11],cpu3` → `gpu07`.

    The same answer as `scontrol show hostnames LIST | head -n1`, computed without asking the
    controller: thousands of ranks calling scontrol at start-up is a known way to stall slurmctld.
    Each bracket contributes its first element; zero padding is kept (`[07-08]` → `07`).
    """
    depth, first = 0, node_list.strip()
    for i, ch in enumerate(first):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            first = first[:i]
            break
    host = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(",")[0].split("-")[0], first)
    if not host or "[" in host or "]" in host:
        raise ValueError(f"cannot read the first host of SLURM node list {node_list!r}")
    return host


def master_port(job_id: int) -> int:
    """A port every task of the job derives alike, different for jobs with nearby ids."""
    return PORT_BASE + job_id % PORT_SPAN


def rendezvous(task: SlurmTask) -> dict[str, str]:
    return {"MASTER_ADDR": first_host(task.node_list), "MASTER_PORT": str(master_port(task.job_id))}


def fill_rendezvous_env(env: MutableMapping[str, str] = os.environ) -> None:
    """Set MASTER_ADDR/MASTER_PORT for `srun python ...` when no launcher did.

    torchrun and the deepspeed launcher set both for their workers; those values win.
    """
    task = current_task(env)
    if task is None or task.ntasks <= 1:
        return
    for key, value in rendezvous(task).items():
        env.setdefault(key, value)


def requeue_current_job(env: MutableMapping[str, str] = os.environ) -> bool:
    """Ask SLURM to requeue this batch job (call once, from rank 0, after the checkpoint is written).

    Returns whether the request was accepted. The controller then ends every process of the job
    (SIGTERM, SIGKILL after KillWait) and restarts the batch script with the same job id and
    SLURM_RESTART_COUNT+1; a requeued job also waits for its begin time (about two minutes by
    default) before it may start. Nothing happens outside SLURM, for an interactive allocation
    (only batch jobs can be requeued), or for a job submitted with --no-requeue: that user asked
    not to come back, so the run stops with its checkpoint and a rerun with the same run.dir resumes.
    """
    job_id = env.get("SLURM_JOB_ID")
    if not job_id:
        log.info("stopped by the warning signal outside SLURM: not requeueing")
        return False
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        log.warning("SLURM job %s: scontrol is not on PATH, cannot requeue; resubmit to resume", job_id)
        return False
    shown = subprocess.run(
        [scontrol, "show", "job", "--oneliner", job_id], capture_output=True, text=True, timeout=60
    )
    fields = dict(re.findall(r"(\w+)=(\S*)", shown.stdout))
    if fields.get("BatchFlag") != "1" or fields.get("Requeue") != "1":
        log.warning(
            "SLURM job %s is not requeueable (BatchFlag=%s Requeue=%s; submit with sbatch --requeue): "
            "stopping with a checkpoint; resubmit with the same run.dir to resume",
            job_id,
            fields.get("BatchFlag"),
            fields.get("Requeue"),
        )
        return False
    # Logged before asking: the controller's SIGTERM may end this process before scontrol returns.
    log.info("requeueing SLURM job %s: it restarts with the same id and resumes from this checkpoint", job_id)
    for handler in logging.getLogger().handlers:
        handler.flush()
    done = subprocess.run([scontrol, "requeue", job_id], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        # E.g. SLURM is already requeueing the job itself (preemption with PreemptMode=REQUEUE).
        log.warning("scontrol requeue %s failed: %s", job_id, (done.stderr or done.stdout).strip())
        return False
    return True


def main() -> None:
    """Print the rendezvous for the per-node launcher scripts (run in the batch shell, no srun step)."""
    env = os.environ
    if not env.get("SLURM_JOB_ID") or not env.get("SLURM_JOB_NODELIST"):
        raise SystemExit("python -m llmtrain.cluster.slurm: not inside a SLURM job (no SLURM_JOB_ID)")
    job_id = int(env["SLURM_JOB_ID"])
    print(f"export MASTER_ADDR={first_host(env['SLURM_JOB_NODELIST'])} MASTER_PORT={master_port(job_id)}")


if __name__ == "__main__":
    main()
