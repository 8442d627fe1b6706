"""Shared fixtures. Real data for tests lives in ../shared/data beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# One intra-op thread, as every launched rank has (tests/launcher.py): a run in this process then
# does the same float arithmetic as the same run launched, so a run started in one and resumed in
# the other continues with the same numbers (two threads sum in another order: 1e-4 apart by step 55).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"test data folder {SHARED_DATA} is missing (the CI clone has shared/ beside the repo)")
    return SHARED_DATA


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the fork server of simulated ranks now when slow tests will run: its imports (and
    DeepSpeed's op build on a new machine) use the second core while the in-process tests, which
    run on one thread, come first."""
    if any(item.get_closest_marker("slow") for item in session.items):
        from launcher import start_forkserver

        start_forkserver()
