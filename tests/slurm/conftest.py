"""The local SLURM cluster the tests in this folder submit to (started by .ci/slurm-up)."""

from __future__ import annotations

import subprocess

import pytest
from slurm_jobs import slurm_available


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Skip only where SLURM is not installed at all; a cluster that is installed but does not answer
    is a broken test environment, and says so."""
    if not slurm_available():
        pytest.skip("sbatch is not installed: run `bash .ci/slurm-up` (as root) to start a local cluster")
    shown = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    states = shown.stdout.split()
    if shown.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states):
        pytest.fail(
            f"sbatch exists but the SLURM cluster is not usable (sinfo rc={shown.returncode}, node states "
            f"{states or 'none'}, {shown.stderr.strip()}): start it with `bash .ci/slurm-up`"
        )
