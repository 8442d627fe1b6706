"""The training loop: read it top to bottom.

setup (process group, run dir, data, model, strategy, resume) → for each step: fetch the step's
micro-batches, count their label tokens over all ranks, forward/backward each with the loss
normalised to the global token mean, one optimizer step → log, evaluate, checkpoint → stop reason.
The loop only talks to the `Strategy` interface; it never asks which strategy it has.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmtrain.checkpoint import layout
from llmtrain.checkpoint.compat import check_resume_compatible
from llmtrain.checkpoint.export import TOKENIZER_DIR
from llmtrain.checkpoint.io import load_checkpoint, save_checkpoint
from llmtrain.cluster.signals import StopRequest
from llmtrain.cluster.slurm import requeue_current_job
from llmtrain.config import TrainConfig, from_yaml, to_yaml
from llmtrain.data import save_chat_settings
from llmtrain.dist import (
    DistInfo,
    all_reduce_max_host,
    all_reduce_sum,
    broadcast_object,
    destroy,
    init_distributed,
    is_main_process,
)
from llmtrain.metrics.memory import peak_memory_gib
from llmtrain.metrics.peak import peak_flops
from llmtrain.model.build import DTYPES
from llmtrain.model.flops import flops_per_token
from llmtrain.strategy import Strategy
from llmtrain.tracking.console import setup_logging
from llmtrain.tracking.tracker import Tracker
from llmtrain.train.evaluate import evaluate
from llmtrain.train.rundir import resolve_run_dir
from llmtrain.train.samples import PromptSampler
from llmtrain.train.setup import build_loaders, build_model_and_strategy, prepare_data, to_device
from llmtrain.train.step import train_step

log = logging.getLogger("llmtrain")


@dataclass
class TrainState:
    """Everything besides the strategy's tensors that a resumed run needs to continue exactly."""

    step: int = 0
    tokens: int = 0
    best_val_loss: float | None = None
    nonfinite_streak: int = 0
    skipped_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "best_val_loss": self.best_val_loss,
            "skipped_steps": self.skipped_steps,
            # The data position is the step: the sampler's order is a function of (seed, step).
            "data": {"next_step": self.step},
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        known = {"step", "tokens", "best_val_loss", "skipped_steps", "data", "strategy", "world_size"}
        return cls(
            step=d["step"],
            tokens=d["tokens"],
            best_val_loss=d.get("best_val_loss"),
            skipped_steps=d.get("skipped_steps", 0),
            extra={k: v for k, v in d.items() if k not in known},
        )


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stop_reason: str
    final_val_loss: float | None
    last_checkpoint: Path | None


def _resume_point(cfg: TrainConfig, run_dir: Path) -> Path | None:
    ckpt = layout.latest_checkpoint(run_dir) if is_main_process() else None
    ckpt = broadcast_object(str(ckpt) if ckpt else None)
    if ckpt is None:
        return None
    ckpt = Path(ckpt)
    check_resume_compatible(from_yaml(ckpt / "config.yaml"), cfg, str(run_dir))
    return ckpt


def _count_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Non-padding input tokens (padding carries document id -1)."""
    if "document_ids" in batch:
        return (batch["document_ids"] >= 0).sum()
    return torch.tensor(batch["input_ids"].numel())


def train(cfg: TrainConfig) -> TrainResult:
    # USR1 is caught from the start: its default action kills the process, so SLURM's warning arriving
    # during a minutes-long set-up would lose the job's requeue. SIGTERM keeps its default until the
    # loop (nothing to save yet), so forked helpers (data-prep pools) still die on Pool.terminate().
    stop = StopRequest().install((signal.SIGUSR1,))
    try:
        dist = init_distributed(cfg.trainer.device, cfg.dist.timeout_s)
        try:
            return _train(cfg, dist, stop)
        finally:
            destroy()
    finally:
        stop.uninstall()


def _train(cfg: TrainConfig, dist: DistInfo, stop: StopRequest) -> TrainResult:
    run_dir = resolve_run_dir(cfg)
    setup_logging(run_dir)
    log.info("run directory: %s", run_dir)
    resume_from = _resume_point(cfg, run_dir)
    if is_main_process():
        (run_dir / "config.yaml").write_text(to_yaml(cfg))

    data = prepare_data(cfg)
    tokenizer, shards_dir, manifest = data.tokenizer, data.shards_dir, data.manifest
    if is_main_process():
        tokenizer.save_pretrained(run_dir / TOKENIZER_DIR)
        save_chat_settings(cfg.data, run_dir / TOKENIZER_DIR)  # SFT: so launch/generate.py formats alike
    log.info(
        "data: %s, %s train tokens in %s docs, tokenizer vocab %d",
        shards_dir,
        f"{manifest['splits']['train']['num_tokens']:,}",
        f"{manifest['splits']['train']['num_docs']:,}",
        len(tokenizer),
    )

    strategy = build_model_and_strategy(cfg, dist, len(tokenizer))

    state = TrainState()
    if resume_from is not None:
        state = TrainState.from_dict(load_checkpoint(resume_from, strategy))
        log.info("resumed from %s at step %d (%s tokens)", resume_from, state.step, f"{state.tokens:,}")

    accum = cfg.trainer.grad_accum_for(strategy.dp_size)
    train_loader, val_loader = build_loaders(cfg, shards_dir, strategy, state.step)
    log.info(
        "batch: global %d = micro %d × accumulation %d × data-parallel %d; seq_len %d; strategy %s",
        cfg.trainer.global_batch_size,
        cfg.trainer.micro_batch_size,
        accum,
        strategy.dp_size,
        cfg.data.seq_len,
        strategy.name,
    )

    tracker = Tracker(cfg, run_dir, resume_step=state.step, run_state=state.extra)
    sampler = PromptSampler(cfg, tokenizer) if cfg.trainer.sample_prompts else None
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        cfg.trainer.precision, DTYPES[cfg.model.dtype]
    )
    flops_tok = flops_per_token(strategy.hf_model.config, cfg.data.seq_len)
    peak = peak_flops(dist.device, compute_dtype) * dist.world_size
    stop.install()
    stop_reason = f"reached trainer.max_steps={cfg.trainer.max_steps}"
    last_ckpt: Path | None = resume_from
    val_loss: float | None = None

    def checkpoint() -> Path:
        return save_checkpoint(run_dir, strategy, state.to_dict(), cfg)

    # Interval accumulators stay on the device; they are reduced and read only at log steps, so
    # the host never waits for the device inside the loop (step skips included: see the strategy).
    interval_loss = torch.zeros((), device=dist.device)
    interval_labels = torch.zeros((), device=dist.device)
    interval_tokens = torch.zeros((), device=dist.device)
    skips = _SkipCounter(state.nonfinite_streak, state.step, dist.device)
    interval_start, data_time, interval_steps = time.perf_counter(), 0.0, 0
    data_iter = iter(train_loader)
    if state.step == 0 and cfg.trainer.eval_every:
        val_loss = _eval_and_log(strategy, val_loader, tracker, state, sampler)  # the starting point
    strategy.train(True)
    try:
        while state.step < cfg.trainer.max_steps:
            t_data = time.perf_counter()
            micro_batches = [to_device(next(data_iter), dist.device) for _ in range(accum)]
            data_time += time.perf_counter() - t_data

            out = train_step(strategy, micro_batches)
            result = out.result

            state.step += 1
            interval_steps += 1
            interval_loss += out.loss_sum
            interval_labels += out.num_labels
            interval_tokens += sum(_count_tokens(mb) for mb in micro_batches)
            skipped = result.skipped.to(dist.device)
            skips.add(skipped, state.step)

            log_step = state.step % cfg.trainer.log_every == 0 or state.step == cfg.trainer.max_steps
            save_step = state.step % cfg.trainer.save_every == 0 and state.step < cfg.trainer.max_steps
            if log_step or save_step:
                # Read at log and checkpoint steps only: a run of max_nonfinite_steps skipped steps
                # ends training at the first of those steps that sees it.
                skips.read(state)
                if state.nonfinite_streak >= cfg.trainer.max_nonfinite_steps:
                    stop_reason = (
                        f"{state.nonfinite_streak} consecutive non-finite steps (trainer.max_nonfinite_steps)"
                    )
                    break

            if log_step:
                totals = all_reduce_sum(torch.stack([interval_loss, interval_labels, interval_tokens]))
                elapsed = time.perf_counter() - interval_start
                tokens = int(totals[2].item())
                state.tokens += tokens
                tokens_per_sec = tokens / elapsed
                metrics = {
                    "step": state.step,
                    "loss": (totals[0] / totals[1].clamp(min=1)).item(),
                    "lr": strategy.lr(),
                    "grad_norm": result.grad_norm.item(),
                    "tokens": state.tokens,
                    "tokens_per_sec": tokens_per_sec,
                    "mfu": flops_tok * tokens_per_sec / peak,
                    "step_time": elapsed / interval_steps,
                    "data_time": data_time / interval_steps,
                    "memory_gib": peak_memory_gib(dist.device),
                    "skipped_steps": state.skipped_steps,
                }
                if result.loss_scale is not None:
                    metrics["loss_scale"] = result.loss_scale.item()
                tracker.log(metrics, ("loss", "lr", "grad_norm", "tokens_per_sec", "mfu"))
                interval_loss.zero_(), interval_labels.zero_(), interval_tokens.zero_()
                interval_start, data_time, interval_steps = time.perf_counter(), 0.0, 0

            if cfg.trainer.eval_every and state.step % cfg.trainer.eval_every == 0:
                val_loss = _eval_and_log(strategy, val_loader, tracker, state, sampler)

            stop_code = all_reduce_max_host(stop.code)  # host-side: no device sync
            if stop_code:
                stop.agree(stop_code)  # a rank the signal missed learns which one it was
                stop_reason = f"stopped by {stop.signal_name} at step {state.step}"
                break
            if save_step:
                last_ckpt = checkpoint()
    finally:
        stop.uninstall()
    skips.read(state)  # steps since the last read (a signal stop), before the final checkpoint

    if state.step == cfg.trainer.max_steps and (
        not cfg.trainer.eval_every or state.step % cfg.trainer.eval_every
    ):
        val_loss = _eval_and_log(strategy, val_loader, tracker, state, sampler)
    if last_ckpt is None or layout.read_trainer_state(last_ckpt)["step"] != state.step:
        last_ckpt = checkpoint()
    tracker.summary(
        {
            "stop": stop_reason,
            "step": state.step,
            "tokens": state.tokens,
            "final_val_loss": val_loss,
            "best_val_loss": state.best_val_loss,
            "checkpoint": str(last_ckpt),
        }
    )
    log.info("stop: %s", stop_reason)
    log.info("run directory: %s", run_dir)
    tracker.close()
    if stop.signal_name == "SIGUSR1" and is_main_process():
        # SLURM's warning before the time limit: the checkpoint is complete on every rank (the save
        # ends with a barrier), so come back as the same job and resume from it.
        requeue_current_job()
    return TrainResult(run_dir, state.step, stop_reason, val_loss, last_ckpt)


class _SkipCounter:
    """Non-finite (skipped) steps, counted on the device and read by the host only when asked."""

    def __init__(self, streak: int, step: int, device: torch.device) -> None:
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        self.streak = torch.full((), streak, dtype=torch.int64, device=device)
        self.last = torch.zeros((), dtype=torch.int64, device=device)
        self.since = step + 1

    def add(self, skipped: torch.Tensor, step: int) -> None:
        self.count += skipped
        self.streak = (self.streak + 1) * skipped
        self.last = torch.where(skipped, step, self.last)

    def read(self, state: TrainState) -> None:
        """Fold the counts since the last read into `state`, warning about the skipped steps."""
        count, streak, last = torch.stack([self.count, self.streak, self.last]).tolist()
        self.count.zero_()
        state.nonfinite_streak = int(streak)
        if count:
            state.skipped_steps += int(count)
            where = f"step {last}" if count == 1 else f"{count} steps of {self.since}-{state.step}"
            log.warning("%s: non-finite gradients, update skipped", where)
        self.since = state.step + 1


def _eval_and_log(
    strategy: Strategy, val_loader, tracker: Tracker, state: TrainState, sampler: PromptSampler | None = None
) -> float | None:
    if sampler is not None:
        rows = sampler(strategy)
        for row in rows:
            log.info("step %d | sample | %r -> %r", state.step, row["prompt"], row["completion"])
        tracker.log_samples(state.step, rows)
    val_loss = evaluate(strategy, val_loader)
    if val_loss is None:
        return None
    if state.best_val_loss is None or val_loss < state.best_val_loss:
        state.best_val_loss = val_loss
    tracker.log({"step": state.step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))})
    return val_loss
