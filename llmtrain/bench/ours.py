"""Time our own training step (the one the loop runs) after a warm-up."""

from __future__ import annotations

import time

import torch

from llmtrain.bench.result import BenchResult
from llmtrain.config import TrainConfig
from llmtrain.dist import DistInfo, all_reduce_sum
from llmtrain.metrics.memory import peak_memory_gib
from llmtrain.metrics.peak import peak_flops
from llmtrain.model.build import DTYPES
from llmtrain.model.flops import flops_per_token
from llmtrain.train.setup import RunData, build_loaders, build_model_and_strategy, to_device
from llmtrain.train.step import train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_llmtrain(cfg: TrainConfig, dist: DistInfo, data: RunData, warmup: int, steps: int) -> BenchResult:
    strategy = build_model_and_strategy(cfg, dist, len(data.tokenizer))
    train_loader, _ = build_loaders(cfg, data.shards_dir, strategy, start_step=0)
    accum = cfg.trainer.grad_accum_for(strategy.dp_size)
    it = iter(train_loader)
    strategy.train(True)
    losses: list[float] = []
    data_time = 0.0
    # Non-padding tokens (document id >= 0) of the timed steps: what padded SFT batches really train.
    real_tokens = torch.zeros((), dtype=torch.int64, device=dist.device)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(dist.device)
            if dist.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dist.device)
            start, data_time = time.perf_counter(), 0.0
            real_tokens.zero_()
        t = time.perf_counter()
        batches = [to_device(next(it), dist.device) for _ in range(accum)]
        data_time += time.perf_counter() - t
        out = train_step(strategy, batches)
        real_tokens += sum(
            ((b["document_ids"] >= 0).sum() if "document_ids" in b else b["input_ids"].numel())
            for b in batches
        )
        if i == warmup + steps - 1 or i % 10 == 0:
            losses.append((out.loss_sum / out.num_labels).item())
    _sync(dist.device)
    elapsed = time.perf_counter() - start
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        cfg.trainer.precision, DTYPES[cfg.model.dtype]
    )
    return BenchResult(
        name=f"llmtrain[{strategy.name}]",
        steps=steps,
        tokens_per_step=cfg.trainer.global_batch_size * cfg.data.seq_len,
        effective_tokens_per_step=int(all_reduce_sum(real_tokens).item()) / steps,
        step_time_s=elapsed / steps,
        data_time_s=data_time / steps,
        peak_memory_gib=peak_memory_gib(dist.device),
        flops_per_token=flops_per_token(strategy.hf_model.config, cfg.data.seq_len),
        peak_flops=peak_flops(dist.device, dtype) * dist.world_size,
        world_size=dist.world_size,
        memory=strategy.memory_report(),
        losses=losses,
    )
