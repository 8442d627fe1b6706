"""`launch/train.py` with a broken all-to-all: each rank keeps its own chunks instead of exchanging
them, so attention sees its own sequence slice where the whole sequence belongs. The negative
control of the sequence-parallel tests in tests/strategy/test_parallel.py."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import llmtrain.strategy.sequence_parallel as sequence_parallel

TRAIN = Path(__file__).resolve().parents[2] / "launch" / "train.py"
sequence_parallel.all_to_all = lambda x, group: x.clone()
sys.argv = [str(TRAIN), *sys.argv[1:]]
runpy.run_path(str(TRAIN), run_name="__main__")
