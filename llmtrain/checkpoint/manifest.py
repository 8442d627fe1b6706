"""A content hash per file of a step folder, written at commit and checked before a checkpoint is used.

A checkpoint that is complete (its `trainer_state.json` exists) can still be wrong: a bit flip, a
file truncated or overwritten on a shared filesystem. Loading one silently resumes a run from
garbage. Rank 0 writes `manifest.json` (sha256 of every file, by path in the folder) once every rank
has written its shards and before `trainer_state.json` marks the folder complete; resume and
export recompute the hashes and refuse, or fall back to an older checkpoint, on any difference.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from llmtrain.checkpoint import layout
from llmtrain.checkpoint.errors import CheckpointError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Written after the manifest (it marks the folder complete), so it cannot be listed in it.
UNHASHED = {MANIFEST, layout.TRAINER_STATE}
CHUNK = 1 << 20


def sha256(path: Path) -> str:
    """The file's sha256, read in 1 MiB chunks (shards can be many GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in UNHASHED
    )


def write_manifest(folder: Path) -> None:
    """Hash every file under `folder` into `folder/manifest.json` (rank 0, all shards written)."""
    files = {p.relative_to(folder).as_posix(): sha256(p) for p in _files(folder)}
    (folder / MANIFEST).write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=1) + "\n")


def verify(folder: Path) -> str | None:
    """None when every file the manifest lists is there with its hash; else what is wrong, naming
    the file. A folder without a manifest (written before checkpoints had one) passes with a warning."""
    path = folder / MANIFEST
    if not path.is_file():
        log.warning("%s has no %s (an older llmtrain wrote it): its files are not verified", folder, MANIFEST)
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"{path}: unreadable manifest ({exc})"
    for name, expected in files.items():
        file = folder / name
        if not file.is_file():
            return f"{file}: missing (listed in {MANIFEST})"
        if sha256(file) != expected:
            return f"{file}: content differs from the sha256 recorded at save time (corrupt or modified)"
    try:
        layout.read_meta(folder)
    except (ValueError, KeyError) as exc:
        return f"{folder / layout.TRAINER_STATE}: unreadable ({exc})"
    return None


class NoVerifiedCheckpointError(CheckpointError):
    """Every complete checkpoint of a run directory failed verification."""


def newest_verified(run_dir: Path) -> Path | None:
    """`latest`, or when it fails verification the newest older checkpoint that passes, warning
    for each one skipped; None when the run has no checkpoint. Raises when none verifies: starting
    afresh would save over the run's checkpoints."""
    latest = layout.latest_checkpoint(run_dir)
    if latest is None:
        return None
    older = [p for p in reversed(layout.complete_steps(run_dir)) if p != latest]
    problems = []
    for ckpt in [latest, *older]:
        problem = verify(ckpt)
        if problem is None:
            if problems:
                log.warning("using %s, the newest checkpoint whose files verify", ckpt)
            return ckpt
        log.warning("skipping checkpoint %s: %s", ckpt, problem)
        problems.append(problem)
    raise NoVerifiedCheckpointError(
        f"no checkpoint under {layout.checkpoints_dir(run_dir)} verifies:\n  "
        + "\n  ".join(problems)
        + "\nRestore the files, or use a new run.dir to start afresh."
    )
