"""A build lock left by a killed process no longer hangs DeepSpeed's start (llmtrain/strategy/build_lock.py)."""

from __future__ import annotations

import os
import threading
import time

import pytest
from torch.utils.file_baton import FileBaton

from llmtrain.strategy.build_lock import build_lock_path, clear_stale_build_lock


@pytest.fixture
def extensions_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    return tmp_path


def test_lock_path_is_the_one_torch_loader_uses(extensions_dir):
    assert build_lock_path("deepspeed_shm_comm") == extensions_dir / "deepspeed_shm_comm" / "lock"


def test_old_lock_is_removed_so_torch_can_take_it_again(extensions_dir, caplog):
    lock = build_lock_path("some_op")
    lock.touch()
    old = time.time() - 3600
    os.utime(lock, (old, old))
    assert not FileBaton(str(lock)).try_acquire()  # what torch's loader sees: taken, so it waits

    with caplog.at_level("WARNING"):
        assert clear_stale_build_lock("some_op", stale_after_s=300)
    assert not lock.exists()
    assert "stale build lock" in caplog.text and str(lock) in caplog.text
    baton = FileBaton(str(lock))
    assert baton.try_acquire()
    baton.release()


def test_young_lock_released_by_its_builder_is_left_to_it(extensions_dir):
    lock = build_lock_path("some_op")
    lock.touch()
    releaser = threading.Timer(0.3, lock.unlink)
    releaser.start()
    t0 = time.monotonic()
    assert not clear_stale_build_lock("some_op", stale_after_s=60, poll_s=0.05)
    releaser.join()
    assert 0.25 < time.monotonic() - t0 < 10


def test_young_lock_never_released_is_removed_once_it_ages_past_the_limit(extensions_dir):
    lock = build_lock_path("some_op")
    lock.touch()
    t0 = time.monotonic()
    assert clear_stale_build_lock("some_op", stale_after_s=0.5, poll_s=0.05)
    assert not lock.exists()
    assert time.monotonic() - t0 >= 0.4


def test_no_lock_returns_at_once(extensions_dir):
    assert not clear_stale_build_lock("some_op", stale_after_s=300)
