"""One place that records metrics: the console line, `metrics.jsonl`, and W&B when enabled.

Only rank 0 constructs a writing tracker; other ranks get one that drops everything, so callers
never branch on rank.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from llmtrain.config import TrainConfig
from llmtrain.dist import is_main_process

log = logging.getLogger("llmtrain")

METRICS_FILE = "metrics.jsonl"


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, float):
        if key == "lr":
            return f"{key} {value:.2e}"
        if key in ("tokens_per_sec",):
            return f"{key} {value:,.0f}"
        if key == "mfu":
            return f"mfu {100 * value:.2f}%"
        return f"{key} {value:.4f}"
    return f"{key} {value}"


class Tracker:
    def __init__(self, cfg: TrainConfig, run_dir: Path, resume_step: int = 0) -> None:
        self.enabled = is_main_process()
        self.path = run_dir / METRICS_FILE
        self.cfg = cfg
        if self.enabled and resume_step > 0 and self.path.exists():
            self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> None:
        """Drop lines logged after the checkpoint we resume from: they will be logged again."""
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, metrics: dict[str, Any], console_keys: tuple[str, ...] | None = None) -> None:
        if not self.enabled:
            return
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        keys = console_keys or tuple(k for k in metrics if k != "step")
        log.info(
            "step %d | %s", metrics["step"], " | ".join(_fmt(k, metrics[k]) for k in keys if k in metrics)
        )

    def summary(self, values: dict[str, Any]) -> None:
        if self.enabled:
            log.info("summary: %s", ", ".join(_fmt(k, v) for k, v in values.items()))

    def close(self) -> None:
        pass
