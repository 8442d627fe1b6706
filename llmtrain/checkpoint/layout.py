"""Where run-directory and checkpoint files live, and how a step folder is committed atomically.

run_dir/
    config.yaml             the resolved config of the latest start
    tokenizer/              the tokenizer, Hugging Face format (copied into every export)
    best.json               the best evaluation (metric, mode, value, step, its checkpoint), when tracked
    checkpoints/
        step_000100/            one folder per saved step, complete or absent
            trainer_state.json  step and token counters, data position, strategy, world size, finite
            manifest.json       sha256 of every other file (written before trainer_state.json)
            config.yaml         the resolved config that wrote it
            hf_config/          the model's Hugging Face config.json (for export)
            model/              the strategy's own (possibly sharded) model + optimizer state
            rng/rank_00000.*    per-rank RNG states (.safetensors + .json)
        latest                  text file naming the newest complete step folder
(`metrics.jsonl`, `train.log` and the other tracking files are named in llmtrain.tracking.)

A step is written into `.tmp-step_NNNNNN`, renamed when every rank has finished, and only then is
`latest` replaced (write + fsync + rename). A crash at any point leaves the previous checkpoint as
`latest` and intact.

The best checkpoint (`trainer.early_stopping`, `trainer.keep_best`) is the step the *latest*
checkpoint's trainer state names as `best_step`: that state is committed atomically with its
folder, so the best survives any crash, and retention keeps that folder whatever `keep_last` says.
`best.json` is a readable copy rewritten after each save; nothing reads it back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtrain.checkpoint.errors import CheckpointNotFound

# In the run directory.
RUN_CONFIG = "config.yaml"
TOKENIZER_DIR = "tokenizer"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST_RECORD = "best.json"
# In a step folder.
TRAINER_STATE = "trainer_state.json"
CONFIG = "config.yaml"
HF_CONFIG_DIR = "hf_config"
MODEL_DIR = "model"
RNG_DIR = "rng"
STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class CheckpointMeta:
    """`trainer_state.json`: which strategy on how many ranks wrote the folder, whether its training
    state was finite (no non-finite streak running: retention keeps the newest such checkpoint), and
    the trainer's own state (`TrainState`, opaque here). Stored flat, trainer keys beside the rest."""

    strategy: str
    world_size: int
    trainer: dict[str, Any]
    finite: bool = True

    @property
    def step(self) -> int:
        return int(self.trainer["step"])

    def to_json(self) -> str:
        own = {"strategy": self.strategy, "world_size": self.world_size, "finite": self.finite}
        return json.dumps({**self.trainer, **own}, indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckpointMeta:
        trainer = {k: v for k, v in d.items() if k not in ("strategy", "world_size", "finite")}
        # Checkpoints from before the flag were only kept while training was finite enough.
        return cls(d["strategy"], d["world_size"], trainer, finite=d.get("finite", True))


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def temp_dir_for(run_dir: Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f".tmp-{step_dir_name(step)}"


def is_complete(path: Path) -> bool:
    return (path / TRAINER_STATE).is_file()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def commit(run_dir: Path, step: int) -> Path:
    """Rename the finished temp folder into place, then point `latest` at it (rank 0 only)."""
    final = checkpoints_dir(run_dir) / step_dir_name(step)
    if final.exists():  # the same step saved again (e.g. final save right after a periodic one)
        shutil.rmtree(final)
    os.replace(temp_dir_for(run_dir, step), final)
    point_latest_at(run_dir, final)
    return final


def complete_steps(run_dir: Path) -> list[Path]:
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def point_latest_at(run_dir: Path, ckpt: Path) -> None:
    write_atomic(checkpoints_dir(run_dir) / LATEST, ckpt.name + "\n")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The folder `latest` names; if the pointer is missing or stale, the newest complete folder."""
    pointer = checkpoints_dir(run_dir) / LATEST
    if pointer.is_file():
        named = checkpoints_dir(run_dir) / pointer.read_text().strip()
        if is_complete(named):
            return named
    steps = complete_steps(run_dir)
    return steps[-1] if steps else None


def newest_finite(run_dir: Path) -> Path | None:
    """The newest complete checkpoint saved with no non-finite streak running."""
    return next((p for p in reversed(complete_steps(run_dir)) if read_meta(p).finite), None)


def best_checkpoint(run_dir: Path) -> Path | None:
    """The step folder the latest checkpoint's state names as the best evaluation's, or None when
    the run tracks no best (or that folder is gone: a run dir pruned by an older version)."""
    latest = latest_checkpoint(run_dir)
    step = read_trainer_state(latest).get("best_step") if latest is not None else None
    if step is None:
        return None
    path = checkpoints_dir(run_dir) / step_dir_name(int(step))
    return path if is_complete(path) else None


def write_best_record(run_dir: Path) -> None:
    """`best.json` from the latest checkpoint's state (rank 0, after a commit)."""
    best = best_checkpoint(run_dir)
    if best is None:
        return
    state = read_trainer_state(latest_checkpoint(run_dir))
    record = {
        "metric": state.get("best_metric"),
        "value": state.get("best_value"),
        "step": state.get("best_step"),
        "checkpoint": str(best.relative_to(run_dir)),
    }
    write_atomic(run_dir / BEST_RECORD, json.dumps(record, indent=2) + "\n")


def prune(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints, and stale temp folders.

    `latest`, the best checkpoint and the newest finite checkpoint are always kept: while a run
    diverges its newest checkpoints carry a non-finite streak, and the one before it began is what
    a rerun needs."""
    removed = []
    keep = {latest_checkpoint(run_dir), newest_finite(run_dir), best_checkpoint(run_dir)}
    for old in complete_steps(run_dir)[:-keep_last]:
        if old not in keep:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    for stale in checkpoints_dir(run_dir).glob(".tmp-step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    return removed


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    """`trainer_state.json` as written (the flat dict)."""
    return json.loads((ckpt / TRAINER_STATE).read_text())


def read_meta(ckpt: Path) -> CheckpointMeta:
    return CheckpointMeta.from_dict(read_trainer_state(ckpt))


def rng_file(ckpt_or_tmp: Path, rank: int) -> Path:
    """The stem of a rank's RNG state: `rank_NNNNN.safetensors` + `rank_NNNNN.json`."""
    return ckpt_or_tmp / RNG_DIR / f"rank_{rank:05d}"


def resolve_checkpoint(path: Path) -> Path:
    """Accept a run directory (its latest checkpoint) or a step folder."""
    if is_complete(path):
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointNotFound(
            f"{path} is neither a checkpoint folder (no {TRAINER_STATE}) nor a run directory with a "
            f"complete checkpoint under {CHECKPOINTS}/"
        )
    return found
