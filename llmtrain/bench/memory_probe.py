"""One memory probe: train a few steps at one `data.seq_len` and report this job's per-rank memory.

What is counted, per rank (bytes, the largest over ranks):
- `resting_bytes`: what stays between steps, the rank's parameters (its FSDP shards) and optimizer
  states, measured after a first step has created the states;
- `step_peak_bytes`: the peak of tensors a training step allocates above what was live when it
  began (`llmtrain.metrics.memory.track_peak_allocation`: on CUDA `max_memory_allocated`, on CPU the
  profiler's allocation events replayed by address, an upper bound when gloo's worker threads free
  tensors). Gradients are freed by `zero_grad` between steps, so they are in here, with the
  activations, the all-gathered weights, logits and communication buffers;
- `total_bytes` = resting + step peak: what a cap on the accelerator's memory must hold. Allocator
  fragmentation, the CUDA context and the process's code are not counted.

Our side runs the loop's own `train_step` (one step, then the measured one);
`transformers.Trainer` runs through `bench_hf_trainer` (warm-up, timed, measured step), its states
read from its own optimizer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from llmtrain.config import TrainConfig
from llmtrain.dist import DistInfo, all_reduce_max, destroy, init_distributed, is_main_process
from llmtrain.metrics.memory import track_peak_allocation
from llmtrain.tracking.console import setup_logging
from llmtrain.train.setup import RunData, build_loaders, build_model_and_strategy, prepare_data, to_device
from llmtrain.train.step import train_step


@dataclass(frozen=True)
class MemoryProbe:
    seq_len: int
    world_size: int
    resting_bytes: int
    step_peak_bytes: int
    total_bytes: int
    loss: float


def _worst_over_ranks(seq_len: int, world_size: int, memory: dict[str, int], step_peak: int, loss: float):
    resting = memory["param_bytes"] + memory["optimizer_bytes"]
    # The largest of each figure over ranks (each rank's total too: a cap applies to every rank).
    worst = all_reduce_max(torch.tensor([resting, step_peak, resting + step_peak], dtype=torch.int64))
    return MemoryProbe(seq_len, world_size, int(worst[0]), int(worst[1]), int(worst[2]), loss)


def _probe_llmtrain(cfg: TrainConfig, dist: DistInfo, data: RunData) -> MemoryProbe:
    """Two steps of the loop's own `train_step`: the first creates the optimizer states, the
    second is measured. (Not `bench_llmtrain`: no timing, no MFU peak measurement.)"""
    strategy = build_model_and_strategy(cfg, dist, len(data.tokenizer))
    train_loader, _ = build_loaders(cfg, data.shards_dir, strategy, start_step=0)
    accum = cfg.trainer.grad_accum_for(strategy.dp_size)
    it = iter(train_loader)
    strategy.train(True)

    def batches() -> list[dict[str, torch.Tensor]]:
        return [strategy.local_batch(to_device(next(it), dist.device)) for _ in range(accum)]

    train_step(strategy, batches())
    step_batches = batches()
    with track_peak_allocation(dist.device) as peak:
        out = train_step(strategy, step_batches)
    loss = float(out.loss_sum / out.num_labels)
    return _worst_over_ranks(cfg.data.seq_len, dist.world_size, strategy.memory_report(), peak.bytes, loss)


def probe_memory(cfg: TrainConfig, hf_trainer: bool, out: Path) -> MemoryProbe:
    """Train at `cfg.data.seq_len` and write this job's per-rank `MemoryProbe` to `out` (rank 0)."""
    dist = init_distributed(cfg.trainer.device, cfg.dist.timeout_s)
    setup_logging()
    try:
        data = prepare_data(cfg)
        if hf_trainer:
            from llmtrain.bench.hf_trainer import bench_hf_trainer

            r = bench_hf_trainer(cfg, dist, data, warmup=1, steps=1)
            loss = r.losses[-1] if r.losses else float("nan")
            probe = _worst_over_ranks(
                cfg.data.seq_len, dist.world_size, r.memory, r.step_peak_bytes or 0, loss
            )
        else:
            probe = _probe_llmtrain(cfg, dist, data)
        if is_main_process():
            out.write_text(json.dumps(asdict(probe)) + "\n")
        return probe
    finally:
        destroy()


def read_probe(path: Path) -> MemoryProbe:
    return MemoryProbe(**json.loads(path.read_text()))
