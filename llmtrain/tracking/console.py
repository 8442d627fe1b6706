"""Python logging for a run: rank 0 to the console and `run_dir/train.log`; other ranks warnings only."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from llmtrain.dist import get_rank

FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


def setup_logging(run_dir: Path | None = None) -> None:
    rank = get_rank()
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_llmtrain", False):
            root.removeHandler(h)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if run_dir is not None and rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    for h in handlers:
        h._llmtrain = True  # type: ignore[attr-defined]
        h.setFormatter(logging.Formatter(FORMAT if rank == 0 else f"[rank {rank}] {FORMAT}", "%H:%M:%S"))
        root.addHandler(h)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    # Library chatter that would drown the step lines.
    for noisy in ("transformers", "datasets", "torch.distributed", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
