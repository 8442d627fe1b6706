"""The run directory lock: a second run on a directory in use refuses at once, naming the holder;
the lock of a process that died is gone with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from llmtrain.config import load_config
from llmtrain.train.loop import train
from llmtrain.train.rundir_lock import LOCK_FILE, RunDirInUse, RunDirLock

HOLD = """
import sys, time
from pathlib import Path
from llmtrain.train.rundir_lock import RunDirLock
lock = RunDirLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield run_dir, proc
    proc.kill()
    proc.wait()


def test_a_second_run_on_a_directory_in_use_refuses_at_once_naming_host_and_pid(holder, tmp_path):
    run_dir, proc = holder
    cfg = load_config([f"run.dir={run_dir}", f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_steps=2"])
    started = time.perf_counter()
    with pytest.raises(RunDirInUse, match=rf"pid {proc.pid} on host {socket.gethostname()}"):
        train(cfg)
    assert time.perf_counter() - started < 30  # refused before data preparation or model build
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # and it wrote nothing


def test_the_lock_of_a_killed_process_does_not_block_the_next_run(holder):
    run_dir, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lock = RunDirLock(run_dir).acquire()  # no stale-lock guess: the kernel released it
    lock.release()
