"""The run directory: fixed once per job, the same on every rank."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from llmtrain.config import TrainConfig
from llmtrain.dist import broadcast_object


def resolve_run_dir(cfg: TrainConfig) -> Path:
    """`run.dir` when given; else one derived from a job id every rank shares; else rank 0's clock.

    A `${now:}`-style default evaluated on each rank would differ between ranks (and between a job
    and its requeued self), so the name is decided on rank 0 and broadcast.
    """
    if cfg.run.dir:
        path = Path(cfg.run.dir)
    elif os.environ.get("SLURM_JOB_ID"):
        # A requeued SLURM job keeps its id, so it finds its own checkpoints again.
        path = Path("runs") / cfg.run.name / f"slurm-{os.environ['SLURM_JOB_ID']}"
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / cfg.run.name / stamp
    return Path(broadcast_object(str(path.resolve())))
