"""The W&B side of the tracker: one run per job, resumable, and never able to stop training.

Only the tracker on global rank 0 builds a `WandbRun`, so a multi-node job makes exactly one run.
`import wandb` happens here and only here, when a run is opened: `import llmtrain` and runs with
`logger=none` never pay for it.

Every call into wandb goes through `_guarded`: the first exception (no network, bad API key, a
wandb bug) is logged once as a warning and turns W&B off for the rest of the process. Metrics keep
flowing to metrics.jsonl, which does not depend on anything here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from llmtrain.config import TrainConfig

log = logging.getLogger("llmtrain")

T = TypeVar("T")


def new_run_id() -> str:
    """An id chosen by us, not by W&B, so it can be saved in the checkpoint before any upload."""
    import uuid

    return uuid.uuid4().hex[:16]


class WandbRun:
    """An open W&B run, or a dead one after a failure (every method then does nothing).

    Steps: W&B keeps one history per run and drops (or, once synced offline, mis-orders) a step
    lower than one it has. A resumed run restarts at its checkpoint step `c`, while the crashed
    process may already have logged steps up to some `s > c`. We skip W&B logging of steps `<= s`;
    because training resumes deterministically those steps carry the same values as the ones
    already in W&B, so nothing is lost. `s` is the larger of what W&B itself reports
    (`run.step - 1`, known online) and `last_logged_step`, the tracker's record of what the previous
    process wrote (the only source offline, where W&B knows nothing about earlier segments).
    W&B's `resume_from`/`fork_from` rewind would also work but needs the server: not offline.
    """

    def __init__(
        self, cfg: TrainConfig, run_dir: Path, run_id: str, config: dict[str, Any], last_logged_step: int
    ) -> None:
        self._run: Any = None
        self._failed = False
        self.run_dir = run_dir
        self.skip_through_step = last_logged_step
        self._run = self._guarded("init", lambda: self._init(cfg, run_id, config))
        if self._run is not None:
            self.skip_through_step = max(last_logged_step, int(self._run.step) - 1)

    def _init(self, cfg: TrainConfig, run_id: str, config: dict[str, Any]) -> Any:
        import wandb

        from llmtrain.tracking.naming import run_group, run_name, run_tags

        lc = cfg.logger
        return wandb.init(
            project=lc.project,
            entity=lc.entity,
            group=run_group(cfg),
            name=run_name(cfg),
            tags=run_tags(cfg),
            notes=lc.notes,
            mode=lc.mode,
            config=config,
            # All W&B files under the run dir: every rank agrees on it and nothing lands in the repo.
            dir=str(self.run_dir),
            id=run_id,
            # "allow": continue the run with this id if it exists (requeue, resume), else create it.
            resume="allow",
        )

    @property
    def active(self) -> bool:
        return self._run is not None and not self._failed

    def _guarded(self, what: str, call: Callable[[], T]) -> T | None:
        if self._failed:
            return None
        try:
            return call()
        except Exception as exc:  # anything wandb raises must not stop training
            self._failed = True
            log.warning(
                "W&B %s failed (%s: %s); W&B logging is off for the rest of this run, metrics still go to %s",
                what,
                type(exc).__name__,
                exc,
                self.run_dir / "metrics.jsonl",
            )
            return None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.active or step <= self.skip_through_step:
            return
        self._guarded("log", lambda: self._run.log(metrics, step=step))

    def log_table(self, step: int, key: str, rows: list[dict[str, Any]]) -> None:
        if not self.active or step <= self.skip_through_step or not rows:
            return

        def log_table() -> None:
            import wandb

            columns = list(dict.fromkeys(k for row in rows for k in row))
            table = wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])
            self._run.log({key: table}, step=step)

        self._guarded("log", log_table)

    def log_confusion(
        self, step: int, key: str, gold: list[int], pred: list[int], label_names: list[str]
    ) -> None:
        """A confusion-matrix plot (W&B's own, from the gold and predicted class ids)."""
        if not self.active or step <= self.skip_through_step:
            return

        def log_plot() -> None:
            import wandb

            plot = wandb.plot.confusion_matrix(y_true=gold, preds=pred, class_names=list(label_names))
            self._run.log({key: plot}, step=step)

        self._guarded("log", log_plot)

    def summary(self, values: dict[str, Any]) -> None:
        if self.active:
            self._guarded("summary", lambda: self._run.summary.update(values))

    def finish(self) -> None:
        """Close the run; for offline runs, say how to upload them (all segments, oldest first)."""
        if self._run is None:
            return
        run, self._run = self._run, None

        def finish() -> tuple[bool, str]:
            offline = bool(getattr(run.settings, "_offline", False))
            run_id = run.id
            run.finish()
            return offline, run_id

        if self._failed:
            # Still release wandb's resources, but the one warning has been given already.
            try:
                finish()
            except Exception as exc:
                log.debug("W&B finish after an earlier failure: %s", exc)
            return
        closed = self._guarded("finish", finish)
        self._failed = True  # a later log or a second finish is a no-op
        if closed is not None and closed[0]:
            segments = sorted((self.run_dir / "wandb").glob(f"offline-run-*-{closed[1]}"))
            if segments:
                log.info("W&B run saved offline; upload it with: wandb sync %s", " ".join(map(str, segments)))
