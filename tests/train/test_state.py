"""The train state a checkpoint carries: a resumed run continues its non-finite streak."""

import torch

from llmtrain.train.state import SkipCounter, TrainState


def test_the_non_finite_streak_survives_a_checkpoint_round_trip():
    saved = TrainState(step=7, tokens=100, nonfinite_streak=2, skipped_steps=2, wandb_run_id="abc").to_dict()
    restored = TrainState.from_dict(saved)
    assert restored.nonfinite_streak == 2
    assert restored == TrainState(step=7, tokens=100, nonfinite_streak=2, skipped_steps=2, wandb_run_id="abc")


def test_a_resumed_streak_reaches_the_limit_with_fewer_new_skips():
    """Two skipped steps before the restart and one after make a streak of three, as they would
    have in one run (before the fix the restart reset it to one, so divergence could hide)."""
    state = TrainState.from_dict(TrainState(step=7, nonfinite_streak=2, skipped_steps=2).to_dict())
    skips = SkipCounter(state.nonfinite_streak, state.step, torch.device("cpu"))
    state.step = 8
    skips.add(torch.tensor(True), state.step)
    assert skips.read(state) == 3 and state.skipped_steps == 3
    state.step = 9
    skips.add(torch.tensor(False), state.step)
    assert skips.read(state) == 0
