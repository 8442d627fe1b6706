"""Save and restore a whole training state: strategy state, trainer counters, config, RNG."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmtrain.checkpoint import layout
from llmtrain.config import TrainConfig, to_yaml
from llmtrain.dist import barrier, is_main_process
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
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    run_dir: Path, strategy: Strategy, trainer_state: dict[str, Any], cfg: TrainConfig
) -> Path:
    """Every rank calls this; returns the committed folder. Collective: all ranks must enter."""
    step = trainer_state["step"]
    tmp = layout.temp_dir_for(run_dir, step)
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    barrier()
    strategy.save(tmp / "model")
    rank = strategy.dist.rank
    torch.save(rng_state(), tmp / "rng" / f"rank_{rank:05d}.pt")
    barrier()
    _fault_after_shards(step)
    final = layout.checkpoints_dir(run_dir) / layout.step_dir_name(step)
    if is_main_process():
        (tmp / "config.yaml").write_text(to_yaml(cfg))
        strategy.hf_model.config.save_pretrained(tmp / "hf_config")
        state = dict(trainer_state, strategy=strategy.name, world_size=strategy.dist.world_size)
        # Written last: its presence is what marks the folder complete.
        layout.write_atomic(tmp / layout.TRAINER_STATE, json.dumps(state, indent=2) + "\n")
        final = layout.commit(run_dir, step)
        layout.prune(run_dir, cfg.trainer.keep_last)
    barrier()
    return final


def load_checkpoint(ckpt: Path, strategy: Strategy) -> dict[str, Any]:
    """Restore strategy state and this rank's RNG; return the trainer state."""
    state = layout.read_trainer_state(ckpt)
    if state["strategy"] != strategy.name:
        raise RuntimeError(
            f"{ckpt} was written by strategy {state['strategy']!r} but this run uses {strategy.name!r}; "
            f"export it with `python launch/export_hf.py {ckpt} OUT` and start from model.pretrained=OUT"
        )
    strategy.load(ckpt / "model")
    rank, world = strategy.dist.rank, strategy.dist.world_size
    rng_file = ckpt / "rng" / f"rank_{rank:05d}.pt"
    if state["world_size"] != world:
        log.warning(
            "checkpoint was written by %d ranks, resuming on %d: RNG streams restart",
            state["world_size"],
            world,
        )
    elif rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state
