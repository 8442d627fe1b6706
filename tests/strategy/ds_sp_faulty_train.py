"""`launch/train.py` under DeepSpeed with one sequence-parallel fault, the negative controls of
tests/strategy/test_deepspeed_sp.py (`LLMTRAIN_SP_FAULT` picks it):
- `all_to_all`: DeepSpeed's exchange keeps each rank's own chunks, so attention sees its own
  sequence slice repeated where the whole sequence belongs;
- `divisor`: the backward scale ignores that ZeRO-3 averages over the sequence-parallel ranks too,
  so each gradient is the mean of the sp ranks' contributions instead of their sum (what a loss
  normalised by each rank's own label count would also give, for equal counts)."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import deepspeed.runtime.sequence_parallel.ulysses_sp as ulysses_sp

from llmtrain.strategy.deepspeed import DeepSpeedStrategy

TRAIN = Path(__file__).resolve().parents[2] / "launch" / "train.py"
fault = os.environ["LLMTRAIN_SP_FAULT"]
if fault == "all_to_all":
    ulysses_sp._dim_zero_all_to_all = lambda group, x: x.clone()
elif fault == "divisor":
    DeepSpeedStrategy._grad_divisor = property(lambda self: self.dims.dp)
else:
    raise SystemExit(f"unknown LLMTRAIN_SP_FAULT={fault!r}")
sys.argv = [str(TRAIN), *sys.argv[1:]]
runpy.run_path(str(TRAIN), run_name="__main__")
