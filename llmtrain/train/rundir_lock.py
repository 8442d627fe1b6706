"""An exclusive lock on a run directory, held by rank 0 for the run's life.

Two processes on one `run.dir` would delete each other's temporary checkpoint folders and interleave
`metrics.jsonl`. The lock is `fcntl.flock` on `run_dir/.lock`: the kernel drops it when the holding
process dies, however it dies, so a lock left by a dead process never blocks a rerun (there is no
stale-lock guess to make). The file names the holder (host, pid, start time) for the error message.
flock is advisory and local to one host on some network filesystems; a second job on another node
is caught there only where the filesystem supports it (Lustre and NFSv4 with locking do).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

LOCK_FILE = ".lock"


class RunDirInUse(RuntimeError):
    """Another live process holds the run directory."""


class RunDirLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> RunDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the run's life
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            raise RunDirInUse(
                f"run.dir {self.path.parent} is in use by another run ({_describe(holder)}); wait for it "
                "to end, stop it, or choose another run.dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}) + "\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
    except ValueError:
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
    return f"pid {info['pid']} on host {info['host']}, since {since}"
