"""The entry points' error printer (`llmtrain/cli.py`): a user error is one line, exit status 2,
printed once per job; a traceback only with LLMTRAIN_DEBUG=1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launcher import launch

from llmtrain.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "launch" / "train.py"


def _missing_file_args(tmp_path: Path) -> list[str]:
    return [
        "data=tinyshakespeare",
        f"data.path={tmp_path / 'nowhere.txt'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"run.dir={tmp_path / 'run'}",
        "trainer.device=cpu",
    ]


def _train(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_a_data_error_after_config_loading_is_one_line_and_exit_status_2(tmp_path):
    proc = _train(_missing_file_args(tmp_path))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nowhere.txt" in errors[0], proc.stderr[-3000:]


def test_llmtrain_debug_keeps_the_traceback(tmp_path):
    proc = _train(_missing_file_args(tmp_path), LLMTRAIN_DEBUG="1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.slow
def test_on_two_ranks_the_error_is_printed_once_and_no_rank_waits_for_the_timeout(tmp_path):
    started = time.perf_counter()
    proc = launch("torchrun", 2, _missing_file_args(tmp_path), check=False, timeout=300)
    assert proc.returncode != 0
    assert time.perf_counter() - started < 120  # not dist.timeout_s (600 s) on the waiting rank
    output = proc.stdout + proc.stderr
    assert [line for line in output.splitlines() if line.startswith("error:")] != []
    assert len([line for line in output.splitlines() if line.startswith("error:")]) == 1, output[-4000:]


def test_a_path_given_to_a_data_group_that_generates_its_data_is_a_config_error():
    with pytest.raises(
        ConfigError, match=r"data.path: is set \(/x.txt\) but data=synthetic generates its data"
    ):
        load_config(["data.path=/x.txt"])


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 3 MB tmpfs: too small for one checkpoint of the tiny model (needs root to mount)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_line_naming_it_not_a_library_traceback(tiny_filesystem, tmp_path):
    args = [
        f"run.dir={tiny_filesystem / 'run'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.synthetic_docs=300",
        "data.seq_len=64",
        "data.loader_workers=0",
        "trainer.max_steps=2",
        "trainer.eval_every=0",
        "trainer.device=cpu",
    ]
    proc = _train(args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "no space left on the device" in line
