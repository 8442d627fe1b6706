"""The training loop: read it top to bottom.

setup (process group, run dir, data, model, strategy, resume) → for each step: fetch the step's
micro-batches, count their label tokens over all ranks, forward/backward each with the loss
normalised to the global token mean, one optimizer step → log, evaluate, checkpoint → stop reason.
The loop only talks to the `Strategy` interface; it never asks which strategy it has.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from llmtrain.checkpoint import layout
from llmtrain.checkpoint.io import keep_newest_finite, load_checkpoint, resume_point, save_checkpoint
from llmtrain.cluster.signals import StopRequest
from llmtrain.cluster.slurm import requeue_current_job
from llmtrain.config import TrainConfig
from llmtrain.data.loader import windows_by_source
from llmtrain.dist import (
    DistInfo,
    ParallelDims,
    all_reduce_max_host,
    broadcast_object,
    destroy,
    init_distributed,
    is_main_process,
)
from llmtrain.metrics.memory import peak_memory_gib
from llmtrain.metrics.throughput import IntervalMeter, mfu_peak_flops
from llmtrain.model.flops import flops_per_token
from llmtrain.optim.schedule import LRSchedule
from llmtrain.strategy import Strategy
from llmtrain.strategy.base import StepResult
from llmtrain.tracking.console import setup_logging
from llmtrain.tracking.tracker import Tracker
from llmtrain.train.early_stop import BestTracker, Verdict
from llmtrain.train.evaluate import build_evaluator
from llmtrain.train.rundir import RunDir
from llmtrain.train.setup import RunData, build_loaders, build_model_and_strategy, prepare_data, to_device
from llmtrain.train.state import SkipCounter, TrainState
from llmtrain.train.step import train_step

log = logging.getLogger("llmtrain")


# Process exit codes (`TrainResult.exit_code`; `launch/train.py` exits with it). 1 is Python's for
# an uncaught exception and 2 the launcher's for a config, data or checkpoint error.
EXIT_OK = 0
EXIT_DIVERGED = 3
EXIT_STOPPED = 75  # sysexits' EX_TEMPFAIL: unfinished but resumable, rerun with the same run.dir


@dataclass
class TrainResult:
    """How a run ended. `exit_code`:

    | code | when |
    | --- | --- |
    | 0 (`EXIT_OK`) | `trainer.max_steps` reached; early stopping (`trainer.early_stopping`); or a SLURM USR1 stop whose job was requeued |
    | 3 (`EXIT_DIVERGED`) | `trainer.max_nonfinite_steps` consecutive non-finite steps: no checkpoint of the diverged state; `latest` is the newest finite checkpoint (saved with no streak running) |
    | 75 (`EXIT_STOPPED`) | stopped by a signal before `max_steps` and not requeued: checkpoint written, a rerun resumes |
    """

    run_dir: Path
    step: int
    stop_reason: str
    final_val_loss: float | None
    last_checkpoint: Path | None
    exit_code: int = EXIT_OK


def train(cfg: TrainConfig) -> TrainResult:
    # USR1 is caught from the start: its default action kills the process, so SLURM's warning arriving
    # during a minutes-long set-up would lose the job's requeue. SIGTERM keeps its default until the
    # loop (nothing to save yet), so forked helpers (data-prep pools) still die on Pool.terminate().
    stop = StopRequest().install((signal.SIGUSR1,))
    try:
        dist = init_distributed(cfg.trainer.device, cfg.dist.timeout_s)
        # Before any work: the mesh degrees and the batch must divide the world size.
        cfg.trainer.grad_accum_for(ParallelDims.from_config(cfg.parallel, dist.world_size).dp)
        try:
            with RunDir.resolve(cfg).locked() as run_dir:
                return _train(cfg, dist, stop, run_dir)
        finally:
            destroy()
    finally:
        stop.uninstall()


def _train(cfg: TrainConfig, dist: DistInfo, stop: StopRequest, run_dir: RunDir) -> TrainResult:
    trainer = cfg.trainer
    setup_logging()  # the console only: a refused resume leaves no trace in the run directory
    resume_from = resume_point(run_dir.path, cfg)
    setup_logging(run_dir.path)
    log.info("run directory: %s", run_dir.path)
    run_dir.write_config(cfg)
    data = prepare_data(cfg)
    run_dir.save_tokenizer(data.tokenizer, cfg.data)
    _log_data(data)

    schedule = LRSchedule(cfg.sched, trainer.max_steps)
    strategy = build_model_and_strategy(cfg, dist, len(data.tokenizer), schedule, data)
    state = TrainState()
    if resume_from is not None:
        state = TrainState.from_dict(load_checkpoint(resume_from, strategy))
        log.info("resumed from %s at step %d (%s tokens)", resume_from, state.step, f"{state.tokens:,}")
        schedule.resume(state.schedule, state.step, trainer.max_steps)
    state.schedule = schedule.to_dict()
    accum = trainer.grad_accum_for(strategy.dp_size)
    train_loader, val_loader = build_loaders(cfg, data.shards_dir, strategy, state.step)
    _log_batch(cfg, strategy, accum)

    tracker = Tracker(cfg, run_dir.path, resume_step=state.step, wandb_run_id=state.wandb_run_id)
    state.wandb_run_id = tracker.wandb_run_id
    evaluator = build_evaluator(cfg, data, strategy, val_loader, tracker)
    best = BestTracker(trainer, state)
    meter = _interval_meter(cfg, strategy, state)
    skips = SkipCounter(state.nonfinite_streak, state.step, dist.device)
    stop.install()
    stop_reason = best.already_stopped(state) or f"reached trainer.max_steps={trainer.max_steps}"
    last_ckpt = resume_from

    def checkpoint() -> Path:
        state.interval = meter.snapshot()
        finite = state.nonfinite_streak == 0
        return save_checkpoint(run_dir.path, strategy, state.to_dict(), cfg, finite)

    data_iter = iter(train_loader)
    # The starting point; it can be the best (a fine-tune that only gets worse), so it is saved then.
    if state.step == 0 and trainer.eval_every and best(evaluator(state), state).improved:
        last_ckpt = checkpoint()
    strategy.train(True)
    try:
        while state.step < trainer.max_steps and not best.stopped:
            t_data = time.perf_counter()
            micro_batches = [
                strategy.local_batch(to_device(next(data_iter), dist.device)) for _ in range(accum)
            ]
            data_seconds = time.perf_counter() - t_data
            out = train_step(strategy, micro_batches)
            state.step += 1
            # Everything here stays on the device until a log or checkpoint step reads it.
            meter.add(out.loss_sum, out.num_labels, micro_batches, data_seconds)
            skips.add(out.result.skipped.to(dist.device), state.step)

            log_step = state.step % trainer.log_every == 0 or state.step == trainer.max_steps
            save_step = state.step % trainer.save_every == 0 and state.step < trainer.max_steps
            # A run of max_nonfinite_steps skipped steps ends training at the first read after it.
            if (log_step or save_step) and skips.read(state) >= trainer.max_nonfinite_steps:
                break
            if log_step:
                sources = _source_tokens(train_loader, state.step, cfg.data.seq_len)
                _log_interval(tracker, state, meter, out.result, strategy, sources)
            evaluate_now = trainer.eval_every and state.step % trainer.eval_every == 0
            verdict = best(evaluator(state), state) if evaluate_now else Verdict()
            if verdict.stop_reason:
                stop_reason = verdict.stop_reason
                break
            stop_code = all_reduce_max_host(stop.code)  # host-side: no device sync
            if stop_code:
                stop.agree(stop_code)  # a rank the signal missed learns which one it was
                stop_reason = f"stopped by {stop.signal_name} at step {state.step}"
                break
            if save_step or verdict.improved:  # an improving evaluation's checkpoint is the best
                last_ckpt = checkpoint()
    finally:
        stop.uninstall()
    # Steps since the last read (a signal stop), before the final checkpoint.
    diverged = skips.read(state) >= trainer.max_nonfinite_steps
    if diverged:
        stop_reason, last_ckpt = _diverged(state, trainer.max_nonfinite_steps, run_dir.path)
    else:
        if state.step == trainer.max_steps and (not trainer.eval_every or state.step % trainer.eval_every):
            best(evaluator(state), state)  # the final checkpoint below is this step's
        if last_ckpt is None or layout.read_meta(last_ckpt).step != state.step:
            last_ckpt = checkpoint()
    val_loss = best.last_metrics.get("val_loss")
    evaluator.final_report(state.step)
    requeued = _finish(tracker, stop, state, stop_reason, val_loss, last_ckpt, run_dir.path)
    exit_code = _exit_code(diverged, state.step >= trainer.max_steps or requeued or best.stopped)
    return TrainResult(run_dir.path, state.step, stop_reason, val_loss, last_ckpt, exit_code)


def _interval_meter(cfg: TrainConfig, strategy: Strategy, state: TrainState) -> IntervalMeter:
    """The loop's meter, continuing the interval a resumed checkpoint carried."""
    dist = strategy.dist
    meter = IntervalMeter(
        dist.device,
        flops_per_token(strategy.hf_model.config, cfg.data.seq_len),
        mfu_peak_flops(dist.device, cfg.trainer.precision, cfg.model.dtype, dist.world_size),
        strategy.dp_group,
    )
    if state.interval:
        meter.restore(state.interval, dist.is_main)
    return meter


def _diverged(state: TrainState, limit: int, run_dir: Path) -> tuple[str, Path | None]:
    """The stop reason and the checkpoint to leave as `latest` when the run diverged.

    Saving now would make the diverged state `latest` (at max_steps a rerun would think it
    finished): keep what was saved, with `latest` at the newest finite checkpoint.
    """
    reason = (
        f"diverged: {state.nonfinite_streak} consecutive non-finite steps up to step {state.step} "
        f"(trainer.max_nonfinite_steps={limit}); not saved"
    )
    last_ckpt = keep_newest_finite(run_dir)
    log.error("%s; latest checkpoint: %s", reason, last_ckpt)
    return reason, last_ckpt


def _exit_code(diverged: bool, finished: bool) -> int:
    if diverged:
        return EXIT_DIVERGED
    return EXIT_OK if finished else EXIT_STOPPED


def _log_data(data: RunData) -> None:
    train_split = data.manifest["splits"]["train"]
    log.info(
        "data: %s, %s train tokens in %s docs, tokenizer vocab %d",
        data.shards_dir,
        f"{train_split['num_tokens']:,}",
        f"{train_split['num_docs']:,}",
        len(data.tokenizer),
    )


def _log_batch(cfg: TrainConfig, strategy: Strategy, accum: int) -> None:
    log.info(
        "batch: global %d = micro %d × accumulation %d × data-parallel %d; seq_len %d; strategy %s",
        cfg.trainer.global_batch_size,
        cfg.trainer.micro_batch_for(strategy.dp_size),
        accum,
        strategy.dp_size,
        cfg.data.seq_len,
        strategy.name,
    )


def _log_interval(
    tracker: Tracker,
    state: TrainState,
    meter: IntervalMeter,
    result: StepResult,
    strategy: Strategy,
    extra: dict[str, int] | None = None,
) -> None:
    """One metrics line for the steps since the last one (a collective: every rank calls it)."""
    interval = meter.read()
    state.tokens += interval.tokens
    metrics = {
        "step": state.step,
        "loss": interval.loss,
        "lr": strategy.lr(),
        "grad_norm": result.grad_norm.item(),
        "tokens": state.tokens,
        "tokens_per_sec": interval.tokens_per_sec,
        "mfu": interval.mfu,
        "step_time": interval.seconds / interval.steps,
        "data_time": interval.data_seconds / interval.steps,
        "memory_gib": peak_memory_gib(strategy.dist.device),
        "skipped_steps": state.skipped_steps,
    }
    if result.loss_scale is not None:
        metrics["loss_scale"] = result.loss_scale.item()
    metrics.update(extra or {})
    tracker.log(metrics, ("loss", "lr", "grad_norm", "tokens_per_sec", "mfu"))


def _source_tokens(train_loader, step: int, seq_len: int) -> dict[str, int]:
    """Tokens drawn so far from each source of a mixture (`tokens/<source>`); {} for one corpus.
    Counted from the sampler's plan, so they are exact across resumes and world sizes."""
    return {f"tokens/{name}": n * seq_len for name, n in windows_by_source(train_loader, step).items()}


def _finish(
    tracker: Tracker,
    stop: StopRequest,
    state: TrainState,
    stop_reason: str,
    val_loss: float | None,
    last_ckpt: Path | None,
    run_dir: Path,
) -> bool:
    """Summary and, after SLURM's warning signal, the requeue; returns whether the job was
    requeued, on every rank (they must all exit 0 then: `srun --kill-on-bad-exit` would otherwise
    end rank 0 before its requeue)."""
    tracker.summary(
        {
            "stop": stop_reason,
            "step": state.step,
            "tokens": state.tokens,
            "final_val_loss": val_loss,
            "best_val_loss": state.best_val_loss,
            "best_metric": state.best_metric,
            "best_value": state.best_value,
            "best_step": state.best_step,
            "checkpoint": str(last_ckpt) if last_ckpt else None,
        }
    )
    log.info("stop: %s", stop_reason)
    log.info("run directory: %s", run_dir)
    tracker.close()
    requeued = False
    if stop.signal_name == "SIGUSR1" and is_main_process():
        # SLURM's warning before the time limit: the checkpoint is complete on every rank (the save
        # ends with a barrier), so come back as the same job and resume from it.
        requeued = requeue_current_job()
    return bool(broadcast_object(requeued))
