"""What a run ran on and with: code version, command, hardware, package versions.

A loss curve is only comparable to another when you know both came from the same code and stack;
this is recorded once per run (rank 0) in `run_dir/environment.json` and in the W&B config.
Nothing here may fail a run: each probe falls back to None.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ENVIRONMENT_FILE = "environment.json"
PACKAGES = ("llmtrain", "torch", "transformers", "deepspeed", "peft", "wandb", "flash-attn", "datasets")
# The checkout the running llmtrain was imported from (not the cwd: runs are often launched elsewhere).
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_info() -> dict[str, Any]:
    """Commit and whether the working tree differs from it (untracked files count: new code does)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "branch": None}
    status = _git("status", "--porcelain")
    return {
        "commit": commit,
        "dirty": bool(status) if status is not None else None,
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
    }


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def gpu_names() -> list[str]:
    """CUDA devices visible to this process; [] without CUDA (torch is only imported if loaded)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions from package metadata: no package is imported to find out."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def collect_environment(world_size: int, argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv if argv is None else argv)
    return {
        "git": git_info(),
        "command": " ".join(argv),
        "argv": argv,
        "cwd": os.getcwd(),
        "world_size": world_size,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "gpus": gpu_names(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "packages": package_versions(),
    }


def write_environment(run_dir: Path, env: dict[str, Any]) -> Path:
    path = run_dir / ENVIRONMENT_FILE
    path.write_text(json.dumps(env, indent=2) + "\n")
    return path
