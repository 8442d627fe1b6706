"""`launch/train.py` with the label count summed over every rank instead of the data-parallel
group: the negative control of tests/strategy/test_parallel.py (tensor-parallel peers then count
each label twice, so the loss is normalised per rank pair, not per token)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import llmtrain.strategy.base as base

TRAIN = Path(__file__).resolve().parents[2] / "launch" / "train.py"
base.Strategy.dp_group = property(lambda self: None)  # the whole world
sys.argv = [str(TRAIN), *sys.argv[1:]]
runpy.run_path(str(TRAIN), run_name="__main__")
