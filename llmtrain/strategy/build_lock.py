"""Clear the build lock a killed process left in torch's JIT extension cache.

DeepSpeed JIT-compiles some ops (the CPU accelerator's shared-memory collectives, `cpu_adam` for
ZeRO-Offload) through `torch.utils.cpp_extension.load`, which creates an empty `lock` file in the
op's build directory on *every* load, even when nothing needs building, and waits without end while
that file exists. A process killed inside that window (a preempted SLURM job, a test timeout, Ctrl-C
during start-up) leaves the file behind, and every later run on the machine hangs silently at engine
start with both ranks in `FileBaton.wait`.

The file names no owner, so staleness is judged by age: a real build takes about 80 s on two CPU
cores. One process per node (local rank 0) waits while a lock is younger than `stale_after_s` and
removes an older one, saying so; the other ranks wait in torch's own loop and go on once it is gone.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

STALE_AFTER_S = 300.0


def build_lock_path(op_name: str) -> Path:
    """Where `torch.utils.cpp_extension.load(name=op_name)` keeps its lock (honours TORCH_EXTENSIONS_DIR)."""
    # Private, but the same function torch's loader calls, so the two cannot disagree on the path.
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(op_name, verbose=False)) / "lock"


def clear_stale_build_lock(op_name: str, stale_after_s: float = STALE_AFTER_S, poll_s: float = 1.0) -> bool:
    """Wait out a young lock on `op_name`'s build; remove one older than `stale_after_s`.

    Returns True when a stale lock was removed.
    """
    lock = build_lock_path(op_name)
    waiting_logged = False
    while True:
        try:
            age_s = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return False
        if age_s >= stale_after_s:
            log.warning(
                "removing stale build lock %s (%.0f s old; a process was killed while loading the %s "
                "extension, and torch would wait on it forever)",
                lock,
                age_s,
                op_name,
            )
            lock.unlink(missing_ok=True)
            return True
        if not waiting_logged:
            log.info(
                "waiting for the %s extension build lock %s (%.0f s old; removed as stale at %.0f s)",
                op_name,
                lock,
                age_s,
                stale_after_s,
            )
            waiting_logged = True
        time.sleep(poll_s)


def clear_stale_deepspeed_build_locks(op_builders: list[str], local_rank: int) -> None:
    """Run `clear_stale_build_lock` for the DeepSpeed ops about to load, on local rank 0 only.

    `op_builders` are DeepSpeed builder class names (`ShareMemCommBuilder`); an op the accelerator
    does not build (a CUDA machine has no shared-memory op) is skipped.
    """
    if local_rank != 0:
        return
    from deepspeed.accelerator import get_accelerator

    for builder_name in op_builders:
        builder = get_accelerator().create_op_builder(builder_name)
        if builder is not None:
            clear_stale_build_lock(builder.name)
