"""Time our own training step (the one the loop runs) after a warm-up."""

from __future__ import annotations

import time

import torch

from llmtrain.bench.result import BenchResult
from llmtrain.config import TrainConfig
from llmtrain.dist import DistInfo
from llmtrain.metrics.memory import peak_memory_gib, track_peak_allocation
from llmtrain.metrics.throughput import IntervalMeter, mfu_peak_flops
from llmtrain.model.flops import flops_per_token
from llmtrain.train.setup import RunData, build_loaders, build_model_and_strategy, to_device
from llmtrain.train.step import train_step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock:
    """Seconds spent in each phase of the step, summed over the timed steps.

    Each mark waits for the device, so a phase's time is its kernels' time, not their launch time.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}
        self.last = time.perf_counter()

    def start(self) -> None:
        sync(self.device)
        self.last = time.perf_counter()

    def __call__(self, phase: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.totals[phase] = self.totals.get(phase, 0.0) + now - self.last
        self.last = now


def bench_llmtrain(cfg: TrainConfig, dist: DistInfo, data: RunData, warmup: int, steps: int) -> BenchResult:
    strategy = build_model_and_strategy(cfg, dist, len(data.tokenizer))
    train_loader, _ = build_loaders(cfg, data.shards_dir, strategy, start_step=0)
    accum = cfg.trainer.grad_accum_for(strategy.dp_size)
    it = iter(train_loader)
    strategy.train(True)
    losses: list[float] = []
    clock = PhaseClock(dist.device)
    flops_tok = flops_per_token(strategy.hf_model.config, cfg.data.seq_len)
    peak = mfu_peak_flops(dist.device, cfg.trainer.precision, cfg.model.dtype, dist.world_size)
    # The loop's own meter: the same token count and MFU as metrics.jsonl reports.
    meter = IntervalMeter(dist.device, flops_tok, peak, strategy.dp_group)
    for i in range(warmup + steps):
        if i == warmup:
            clock = PhaseClock(dist.device)
            meter.reset()
        clock.start()
        batches = [strategy.local_batch(to_device(next(it), dist.device)) for _ in range(accum)]
        clock("data")
        out = train_step(strategy, batches, phase_done=clock if i >= warmup else None)
        meter.add(out.loss_sum, out.num_labels, batches)
        if i == warmup + steps - 1 or i % 10 == 0:
            losses.append((out.loss_sum / out.num_labels).item())
    sync(dist.device)
    timed = meter.read()
    # One more step, untimed, to measure what a step allocates on top of weights and states.
    batches = [strategy.local_batch(to_device(next(it), dist.device)) for _ in range(accum)]
    with track_peak_allocation(dist.device) as step_peak:
        train_step(strategy, batches)
    return BenchResult(
        name=f"llmtrain[{strategy.name}]",
        steps=steps,
        tokens_per_step=cfg.trainer.global_batch_size * cfg.data.seq_len,
        effective_tokens_per_step=timed.tokens / steps,
        step_time_s=timed.seconds / steps,
        data_time_s=clock.totals.get("data", 0.0) / steps,
        phases_s={k: v / steps for k, v in clock.totals.items() if k != "data"},
        step_peak_bytes=step_peak.bytes,
        peak_memory_gib=peak_memory_gib(dist.device),
        flops_per_token=flops_tok,
        peak_flops=peak,
        world_size=dist.world_size,
        memory=strategy.memory_report(),
        losses=losses,
    )
