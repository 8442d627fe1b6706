"""Runs shared by the strategy tests: the one-process reference runs and gradient dumps.

Every strategy is checked against `single` on one process, so those runs (pretraining and packed
SFT, and the reference gradients of one hand-made global step) are made once per session and reused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from launcher import launch

HERE = Path(__file__).resolve().parent
GRAD_STEP = HERE / "fsdp_grad_step.py"
STEPS = 10


def _tiny_args(tmp: Path, run: str, **extra: object) -> list[str]:
    """A ~1M-parameter model on the generated corpus, 10 steps of global batch 8, logging every step.

    The schedule is constant after 2 warmup steps so that a run stopped at step N and resumed with a
    larger trainer.max_steps follows the same learning rates as an uninterrupted one.
    """
    base = {
        "run.dir": tmp / run,
        "data.cache_dir": tmp / "cache",
        "data.seq_len": 64,
        "data.synthetic_docs": 400,
        "data.loader_workers": 0,
        "trainer.max_steps": STEPS,
        "trainer.global_batch_size": 8,
        "trainer.micro_batch_size": 2,
        "trainer.log_every": 1,
        "trainer.eval_every": 0,
        "trainer.save_every": 100,
        "trainer.device": "cpu",
        "sched": "constant",
        "sched.warmup_steps": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def strategy_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("strategy")


@pytest.fixture(scope="session")
def tiny_args(strategy_tmp) -> Callable[..., list[str]]:
    """`tiny_args(run_name, **overrides)`: overrides for a tiny run in the session's folder."""
    return lambda run, **extra: _tiny_args(strategy_tmp, run, **extra)


SFT_STEPS, SFT_FIRST = 10, 5


def _sft_args(tmp: Path, run: str, **extra: object) -> list[str]:
    """Packed SFT rows of unequal length (seq 128, 400 synthetic examples), 10 steps of global batch 8,
    saving at step 5 and 10, logging every step; the constant schedule as in `_tiny_args`."""
    base = {
        "run.dir": tmp / run,
        "data.cache_dir": tmp / "cache",
        "data.seq_len": 128,
        "data.sft.synthetic_examples": 400,
        "data.loader_workers": 0,
        "trainer.max_steps": SFT_STEPS,
        "trainer.global_batch_size": 8,
        "trainer.micro_batch_size": 2,
        "trainer.log_every": 1,
        "trainer.eval_every": 0,
        "trainer.save_every": SFT_FIRST,
        "trainer.sample_prompts": "[]",
        "trainer.device": "cpu",
        "sched.name": "constant",  # +exp=sft sets cosine, over a group choice
        "sched.warmup_steps": 2,
    }
    base.update(extra)
    return ["+exp=sft", *(f"{k}={v}" for k, v in base.items())]


@pytest.fixture(scope="session")
def sft_args(strategy_tmp) -> Callable[..., list[str]]:
    """`sft_args(run_name, **overrides)`: overrides for a packed-SFT run in the session's folder."""
    return lambda run, **extra: _sft_args(strategy_tmp, run, **extra)


@pytest.fixture(scope="session")
def sft_reference(strategy_tmp, sft_args) -> Path:
    """10 steps of packed SFT in one process (checkpoints at 5 and 10): what every mesh layout and
    DeepSpeed with sequence parallel must reproduce."""
    launch("forked", 1, sft_args("sft_single"))
    return strategy_tmp / "sft_single"


@pytest.fixture(scope="session")
def single_run(strategy_tmp, tiny_args) -> Path:
    """10 steps of `single` in one process: the reference every strategy must reproduce."""
    launch("forked", 1, tiny_args("single"))
    return strategy_tmp / "single"


# Every gradient dump the tests compare, made by two processes (start-up dominates their cost).
ONE_PROCESS_SPECS = ["single/4/plain", "single/2/plain", "single/4/checkpointing+tied"]
TWO_RANK_SPECS = [
    "single/1/plain",
    "fsdp/1/plain",
    "fsdp/1/checkpointing+tied",
    "fsdp/1/offload+keep-unsharded",
]


@pytest.fixture(scope="session")
def grad_dumps(strategy_tmp) -> dict[tuple[int, str], dict]:
    """(ranks, "STRATEGY/MICRO/VARIANT") → {"grads", "grad_norm"} of fsdp_grad_step.py's global step."""
    dumps = {}
    for launcher, nproc, specs in (("forked", 1, ONE_PROCESS_SPECS), ("forked", 2, TWO_RANK_SPECS)):
        out = strategy_tmp / f"grads_{nproc}.pt"
        launch(launcher, nproc, [str(out), *specs], script=GRAD_STEP)
        dumps.update({(nproc, spec): dump for spec, dump in torch.load(out).items()})
    return dumps
