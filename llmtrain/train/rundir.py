"""The run directory: fixed once per job, the same on every rank, written by rank 0 alone.

`RunDir` owns the paths of the run-level files (their names live in `llmtrain.checkpoint.layout`)
and the writes that must happen once per job, so the loop never checks ranks itself.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmtrain.checkpoint import layout
from llmtrain.config import DataConfig, TrainConfig, to_yaml
from llmtrain.data import save_chat_settings
from llmtrain.dist import broadcast_object, is_main_process
from llmtrain.train.rundir_lock import RunDirInUse, RunDirLock


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


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def resolve(cls, cfg: TrainConfig) -> RunDir:
        return cls(resolve_run_dir(cfg))

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunDir]:
        """Hold the run directory's lock for the block (rank 0 takes it; every rank learns whether
        it got it, so a refused run fails on all ranks at once instead of timing out)."""
        lock, error = None, None
        if is_main_process():
            try:
                lock = RunDirLock(self.path).acquire()
            except RunDirInUse as exc:
                error = str(exc)
        error = broadcast_object(error)
        if error is not None:
            raise RunDirInUse(error)
        try:
            yield self
        finally:
            if lock is not None:
                lock.release()

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / layout.TOKENIZER_DIR

    def write_config(self, cfg: TrainConfig) -> None:
        """The resolved config of this start (each checkpoint keeps its own copy too)."""
        if is_main_process():
            (self.path / layout.RUN_CONFIG).write_text(to_yaml(cfg))

    def save_tokenizer(self, tokenizer: Any, data: DataConfig) -> None:
        """The tokenizer in HF format; for SFT with the chat settings, so exports (which copy this
        folder) let `launch/generate.py` format prompts as in training."""
        if not is_main_process():
            return
        tokenizer.save_pretrained(self.tokenizer_dir)
        save_chat_settings(data, self.tokenizer_dir)
