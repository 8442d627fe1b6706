"""Shared fixtures. Real data for tests lives in ../shared/data beside the repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"test data folder {SHARED_DATA} is missing (the CI clone has shared/ beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module's in-process runs, as every launched rank has
    (tests/launcher.py), for modules that compare a run in this process with a launched one bit for
    bit (two threads sum in another order: 1e-4 apart by step 55). Other in-process runs keep
    torch's default, two threads here, which runs them about 20% faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the fork server of simulated ranks now when slow tests will run, so its start-up
    (imports, seconds; DeepSpeed's op build, a minute more on a new machine) overlaps the
    in-process tests that come first instead of holding up the first launch."""
    if any(item.get_closest_marker("slow") for item in session.items):
        from launcher import start_forkserver

        start_forkserver()
