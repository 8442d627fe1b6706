"""One place that records metrics: the console line, `metrics.jsonl`, and W&B when enabled.

Only rank 0 constructs a writing tracker; other ranks get one that drops everything, so callers
never branch on rank. The files in the run dir are the record of truth: they are written first and
do not depend on W&B, which is a mirror that may fail (see `wandb_run.py`).

Run dir files: `metrics.jsonl` (one object per log call, `step` first), `samples.jsonl` (generation
samples), `confusion.jsonl` (classification), `environment.json`, and `summary.json` at the end.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from llmtrain.config import TrainConfig, to_dict
from llmtrain.dist import get_world_size, is_main_process

log = logging.getLogger("llmtrain")

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
CONFUSION_FILE = "confusion.jsonl"
# Key of the W&B run id in a checkpoint's trainer state (`TrainState.wandb_run_id`).
WANDB_RUN_ID = "wandb_run_id"


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


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf; a diverged loss is recorded as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a jsonl file; a torn last line (a crash mid-write) is dropped with a warning,
    a bad line elsewhere is an error naming it."""
    if not path.exists():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i < len(lines) - 1:
                raise ValueError(f"{path}:{n}: not a JSON object ({exc}); fix or delete that line") from exc
            log.warning("%s:%d: dropped a torn last line (the previous process died writing it)", path, n)
    return records


class Tracker:
    """Console + run-dir files always; W&B too when `logger.name=wandb`.

    The W&B run id is created once (`wandb_run_id` None), read back from `self.wandb_run_id` by
    the trainer and kept in every checkpoint, and passed in again when the run resumes, so a
    requeued job continues the same W&B run instead of starting a new one.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        resume_step: int = 0,
        wandb_run_id: str | None = None,
    ) -> None:
        self.enabled = is_main_process()
        self.run_dir = run_dir
        self.path = run_dir / METRICS_FILE
        self.samples_path = run_dir / SAMPLES_FILE
        self.cfg = cfg
        self.started = time.perf_counter()
        self.wandb = None
        self.wandb_run_id = wandb_run_id
        if not self.enabled:
            return
        last_logged_step = max((m["step"] for m in _read_jsonl(self.path)), default=-1)
        # Lines after the checkpoint we resume from will be logged again; a fresh start (no
        # checkpoint) logs everything again, step 0 included.
        keep_through = resume_step if resume_step > 0 else -1
        for path in (self.path, self.samples_path, run_dir / CONFUSION_FILE):
            self._truncate_after(path, keep_through)

        from llmtrain.tracking.environment import collect_environment, write_environment

        environment = collect_environment(world_size=get_world_size())
        write_environment(run_dir, environment)
        if cfg.logger.name == "wandb":
            from llmtrain.tracking.wandb_run import WandbRun, new_run_id

            resuming = wandb_run_id is not None
            self.wandb_run_id = wandb_run_id or new_run_id()
            config = {**to_dict(cfg), "environment": environment}
            # Steps the previous process logged are already in the W&B run only if we continue it.
            seen = last_logged_step if resuming else -1
            self.wandb = WandbRun(cfg, run_dir, self.wandb_run_id, config, seen)

    @staticmethod
    def _truncate_after(path: Path, step: int) -> None:
        if path.exists():
            kept = [m for m in _read_jsonl(path) if m["step"] <= step]
            path.write_text("".join(json.dumps(m) + "\n" for m in kept))

    def log(self, metrics: dict[str, Any], console_keys: tuple[str, ...] | None = None) -> None:
        """Record one step's metrics; `metrics["step"]` is the training step (W&B's x-axis too)."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _finite_or_none(v) for k, v in metrics.items()}) + "\n")
        keys = console_keys or tuple(k for k in metrics if k != "step")
        log.info(
            "step %d | %s", metrics["step"], " | ".join(_fmt(k, metrics[k]) for k in keys if k in metrics)
        )
        if self.wandb is not None:
            step = metrics["step"]
            self.wandb.log(step, {k: v for k, v in metrics.items() if k != "step"})

    def log_samples(self, step: int, rows: list[dict[str, Any]], key: str = "samples") -> None:
        """Generation samples (e.g. prompt / completion / reference per row) at a training step.

        Appended to `samples.jsonl` (one line per row, with `step` and `key`) and, with W&B, logged
        as one `wandb.Table` so samples from different steps can be read side by side.
        """
        if not self.enabled or not rows:
            return
        with open(self.samples_path, "a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, "key": key, **row}) + "\n")
        if self.wandb is not None:
            self.wandb.log_table(step, key, rows)

    def log_confusion(
        self, step: int, gold: list[int], pred: list[int], label_names: list[str], key: str = "val_confusion"
    ) -> None:
        """A confusion matrix at a training step: W&B's plot when enabled (metrics.jsonl holds only
        scalars; `confusion.jsonl` in the run dir keeps the matrix, one line per evaluation)."""
        if not self.enabled:
            return
        from llmtrain.metrics.classification import confusion

        matrix = confusion(gold, pred, len(label_names))
        with open(self.run_dir / CONFUSION_FILE, "a") as f:
            f.write(
                json.dumps({"step": step, "key": key, "labels": list(label_names), "matrix": matrix}) + "\n"
            )
        if self.wandb is not None:
            self.wandb.log_confusion(step, key, gold, pred, label_names)

    def summary(self, values: dict[str, Any]) -> None:
        """End-of-run values (stop reason, final/best val loss, tokens); adds this process's wall time."""
        if not self.enabled:
            return
        values = {**values, "wall_time_s": round(time.perf_counter() - self.started, 3)}
        log.info("summary: %s", ", ".join(_fmt(k, v) for k, v in values.items()))
        (self.run_dir / SUMMARY_FILE).write_text(
            json.dumps({k: _finite_or_none(v) for k, v in values.items()}, indent=2) + "\n"
        )
        if self.wandb is not None:
            self.wandb.summary(values)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
