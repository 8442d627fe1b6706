"""Save and restore a whole training state: strategy state, trainer counters, config, RNG; and
which checkpoint a starting run resumes from."""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmtrain.checkpoint import layout, manifest
from llmtrain.checkpoint.compat import check_resume_compatible
from llmtrain.checkpoint.errors import CheckpointError
from llmtrain.config import TrainConfig, from_yaml, to_yaml
from llmtrain.dist import barrier, broadcast_object, get_world_size, is_main_process
from llmtrain.strategy import state_file, strategy_class
from llmtrain.strategy.base import Strategy

log = logging.getLogger(__name__)

# Test-only fault injection: every rank kills itself (SIGKILL) after writing its shards of this
# step and before the commit, to prove that a crash mid-save leaves the previous `latest` loadable.
FAULT_AFTER_SHARDS_ENV = "LLMTRAIN_FAULT_CHECKPOINT_AFTER_SHARDS"


def _fault_after_shards(step: int) -> None:
    if os.environ.get(FAULT_AFTER_SHARDS_ENV) == str(step):
        log.error("%s=%d: killing this rank before the checkpoint commit", FAULT_AFTER_SHARDS_ENV, step)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain data (`save_state`): torch's as uint8 tensors, Python's
    and numpy's as numbers (numpy's key array as a list)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, key.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(key, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def resume_point(run_dir: Path, cfg: TrainConfig) -> Path | None:
    """The checkpoint a run starting in `run_dir` continues from, after checking the config does not
    change what it means; None: a fresh start.

    Rank 0 picks `latest`, or the newest older checkpoint whose files match their recorded hashes
    (`manifest.newest_verified`), and every rank gets its answer, or its error."""
    verdict: tuple[str | None, str | None] = (None, None)
    if is_main_process():
        try:
            found = manifest.newest_verified(run_dir)
            verdict = (str(found) if found else None, None)
        except manifest.NoVerifiedCheckpointError as exc:
            verdict = (None, str(exc))
    ckpt, error = broadcast_object(verdict)
    if error is not None:
        raise manifest.NoVerifiedCheckpointError(error)
    if ckpt is None:
        return None
    check_resume_compatible(from_yaml(Path(ckpt) / layout.CONFIG), cfg, str(run_dir))
    # Before any write into the run dir: a checkpoint this strategy cannot load refuses here.
    strategy = strategy_class(cfg.strategy.name)
    check_loadable(
        Path(ckpt), layout.read_meta(Path(ckpt)), cfg.strategy.name, strategy.reshards, get_world_size()
    )
    return Path(ckpt)


def check_loadable(
    ckpt: Path, meta: layout.CheckpointMeta, strategy: str, reshards: bool, world: int
) -> None:
    """Refuse a checkpoint of another strategy, or of another world size the strategy cannot
    reshard, with the way to carry the weights over."""
    export_recipe = (
        f"export the weights with `python launch/export_hf.py {ckpt} OUT` and start a new run "
        "(new run.dir) from model.pretrained=OUT (optimizer state restarts)"
    )
    if meta.strategy != strategy:
        raise CheckpointError(
            f"{ckpt} was written by strategy {meta.strategy!r} but this run uses {strategy!r}; "
            + export_recipe
        )
    if meta.world_size != world and not reshards:
        raise CheckpointError(
            f"{ckpt} was written by {meta.world_size} {strategy} ranks, this run has {world}: "
            f"{strategy} cannot reshard its checkpoint here. Resume on {meta.world_size} ranks, or "
            + export_recipe
        )


def save_checkpoint(
    run_dir: Path, strategy: Strategy, trainer_state: dict[str, Any], cfg: TrainConfig, finite: bool
) -> Path:
    """Every rank calls this; returns the committed folder. Collective: all ranks must enter.

    `finite`: no non-finite streak is running at this step. Retention always keeps the newest
    finite checkpoint, however many others follow it."""
    step = trainer_state["step"]
    tmp = layout.temp_dir_for(run_dir, step)
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / layout.RNG_DIR).mkdir(parents=True)
    barrier()
    strategy.save(tmp / layout.MODEL_DIR)
    state_file.save_state(rng_state(), layout.rng_file(tmp, strategy.dist.rank))
    barrier()
    _fault_after_shards(step)
    final = layout.checkpoints_dir(run_dir) / layout.step_dir_name(step)
    if is_main_process():
        (tmp / layout.CONFIG).write_text(to_yaml(cfg))
        strategy.hf_model.config.save_pretrained(tmp / layout.HF_CONFIG_DIR)
        meta = layout.CheckpointMeta(strategy.name, strategy.dist.world_size, trainer_state, finite)
        # Every rank's shards are on disk (the barrier above): hash them all before the commit.
        manifest.write_manifest(tmp)
        # Written last: its presence is what marks the folder complete.
        layout.write_atomic(tmp / layout.TRAINER_STATE, meta.to_json() + "\n")
        final = layout.commit(run_dir, step)
        layout.prune(run_dir, cfg.trainer.keep_last)
        layout.write_best_record(run_dir)
    barrier()
    return final


def keep_newest_finite(run_dir: Path) -> Path | None:
    """After a divergence: point `latest` at the newest checkpoint saved with a finite training
    state (retention never deleted it) and return it; every rank gets the answer."""
    found = None
    if is_main_process():
        found = layout.newest_finite(run_dir)
        latest = layout.latest_checkpoint(run_dir)
        if found is not None and found != latest:
            log.warning("latest now points at %s, the newest finite checkpoint (was %s)", found, latest)
            layout.point_latest_at(run_dir, found)
    found = broadcast_object(str(found) if found else None)
    return Path(found) if found else None


def load_checkpoint(ckpt: Path, strategy: Strategy) -> dict[str, Any]:
    """Restore strategy state and this rank's RNG; return the trainer state."""
    meta = layout.read_meta(ckpt)
    world = strategy.dist.world_size
    check_loadable(ckpt, meta, strategy.name, type(strategy).reshards, world)
    strategy.load(ckpt / layout.MODEL_DIR)
    rng_file = layout.rng_file(ckpt, strategy.dist.rank)
    if meta.world_size != world:
        log.warning(
            "checkpoint was written by %d ranks, resuming on %d: RNG streams restart", meta.world_size, world
        )
    elif state_file.paths(rng_file)[1].is_file():
        set_rng_state(state_file.load_state(rng_file))
    else:
        # An older checkpoint's pickle (rng/rank_N.pt) is never unpickled: numpy's state in it needs
        # more than weights_only=True allows, and it is not worth running code for.
        log.warning(
            "%s: no RNG state in this format for rank %d: RNG streams restart", ckpt, strategy.dist.rank
        )
    return meta.trainer
