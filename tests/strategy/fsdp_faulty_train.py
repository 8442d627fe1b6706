"""`launch/train.py` with one injected fault, for tests: `fsdp_faulty_train.py [hydra overrides]`.

The fault is chosen by environment variables and injected by wrapping the loop's `train_step` from
outside, so the library carries no test hooks:
  FAULT=inf   FAULT_STEP=k              the loss of global step k is multiplied by inf before
                                        backward: every gradient overflows (an fp16 overflow).
  FAULT=inf_from FAULT_STEP=k           the same for every step from k on: a divergence.
  FAULT=hang  FAULT_STEP=k FAULT_RANK=r rank r stops at step k without dying (a stuck rank): the
                                        others must fail after dist.timeout_s. It still dies on
                                        SIGTERM: with the loop's graceful-stop handler it would make
                                        torchrun wait its fixed 30 s before SIGKILL.
  FAULT=kill  FAULT_STEP=k FAULT_RANK=r rank r SIGKILLs itself at step k (a dead node).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import time
from pathlib import Path

import llmtrain.metrics.throughput as throughput
import llmtrain.train.loop as loop

FAULT = os.environ.get("FAULT", "")
FAULT_STEP = int(os.environ.get("FAULT_STEP", "0"))
FAULT_RANK = int(os.environ.get("FAULT_RANK", "0"))
TRAIN = Path(__file__).resolve().parents[2] / "launch" / "train.py"

_real_train_step = loop.train_step
_calls = 0


def faulty_train_step(strategy, micro_batches):
    global _calls
    _calls += 1
    if _calls == FAULT_STEP or (FAULT == "inf_from" and _calls >= FAULT_STEP):
        if FAULT in ("inf", "inf_from"):
            backward = strategy.backward
            strategy.backward = lambda loss, is_last_micro: backward(loss * float("inf"), is_last_micro)
            try:
                return _real_train_step(strategy, micro_batches)
            finally:
                strategy.backward = backward
        if FAULT in ("hang", "kill") and strategy.dist.rank == FAULT_RANK:
            print(f"FAULT {FAULT} on rank {FAULT_RANK} at step {FAULT_STEP}", flush=True)
            if FAULT == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(3600)
    return _real_train_step(strategy, micro_batches)


loop.train_step = faulty_train_step
# MFU's CPU peak is measured once with a 1024x1024 matmul in the training dtype; CPU fp16 matmuls
# are emulated, so that measurement alone takes ~45 s. MFU is not what these tests look at.
throughput.peak_flops = lambda device, dtype: 1e12
sys.argv = [str(TRAIN), *sys.argv[1:]]
runpy.run_path(str(TRAIN), run_name="__main__")
