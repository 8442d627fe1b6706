"""The test launcher itself (tests/launcher.py, tests/forkserver.py): what every multi-process test
relies on. Forked ranks get torchrun's environment and meet at one store; a failing rank stops the
job; a launch that runs past its timeout leaves no process behind, not even one in a session of its
own (as torch elastic starts its workers)."""

from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from launcher import launch

pytestmark = pytest.mark.slow


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "probe.py"
    path.write_text(textwrap.dedent(body))
    return path


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_forked_ranks_get_torchruns_environment_and_meet_at_one_store(tmp_path):
    script = _script(
        tmp_path,
        """
        import os, sys
        import torch.distributed as dist
        dist.init_process_group("gloo")
        box = [None] * dist.get_world_size()
        dist.all_gather_object(box, os.environ["LOCAL_RANK"])
        # One write per line (print writes the newline apart: ranks sharing a file interleave).
        line = f"rank {dist.get_rank()}/{dist.get_world_size()} saw {box} argv {sys.argv[1:]}\\n"
        os.write(1, line.encode())
        dist.destroy_process_group()
        """,
    )
    proc = launch("forked", 2, ["a", "b=1"], script=script, timeout=120)
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank"))
    assert lines == ["rank 0/2 saw ['0', '1'] argv ['a', 'b=1']", "rank 1/2 saw ['0', '1'] argv ['a', 'b=1']"]


def test_a_failing_forked_rank_stops_the_job_with_its_exit_code(tmp_path):
    script = _script(
        tmp_path,
        """
        import os, sys, time
        if os.environ["RANK"] == "1":
            sys.exit(3)
        time.sleep(300)
        """,
    )
    start = time.monotonic()
    proc = launch("forked", 2, [], script=script, timeout=120, check=False)
    assert proc.returncode == 3
    assert time.monotonic() - start < 60, "rank 0 was left running after rank 1 failed"


@pytest.mark.parametrize("launcher", ["python", "forked"])
def test_a_timed_out_launch_leaves_no_process_behind(tmp_path, launcher):
    """The python launch's script starts a child in a session of its own, as torch elastic does
    with its workers: killing the launch's process group alone would leave it running."""
    pids = tmp_path / "pids"
    script = _script(
        tmp_path,
        f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                                 start_new_session=True)
        with open({str(pids)!r}, "a") as f:
            f.write(f"{{os.getpid()}} {{child.pid}}\\n")
        time.sleep(300)
        """,
    )
    with pytest.raises(subprocess.TimeoutExpired):
        launch(launcher, 1, [], script=script, timeout=4)
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2
    deadline = time.monotonic() + 10
    while not all(map(_gone, started)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in started if not _gone(pid)] == [], "processes outlived the timed-out launch"
