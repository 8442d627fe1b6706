"""The baseline: the same model, windows, sequence length and global batch through `transformers.Trainer`."""

from __future__ import annotations

import tempfile
import time

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from llmtrain.bench.result import BenchResult
from llmtrain.config import TrainConfig
from llmtrain.data.pretrain import PretrainWindows
from llmtrain.data.shards import TokenShards
from llmtrain.dist import DistInfo
from llmtrain.metrics.memory import peak_memory_gib
from llmtrain.metrics.peak import peak_flops
from llmtrain.model.build import DTYPES, build_model
from llmtrain.model.flops import flops_per_token
from llmtrain.train.setup import RunData


class _InputsOnly(Dataset):
    """Trainer passes every field to the model; HF shifts `labels` itself, so labels = inputs."""

    def __init__(self, windows: PretrainWindows) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.windows[i]["input_ids"]
        return {"input_ids": ids, "labels": ids}


class _StepClock(TrainerCallback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end = 0.0
        self.losses: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.start = time.perf_counter()
        self.end = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def bench_hf_trainer(cfg: TrainConfig, dist: DistInfo, data: RunData, warmup: int, steps: int) -> BenchResult:
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg.model, len(data.tokenizer), dist.device)
    windows = PretrainWindows(TokenShards(data.shards_dir, "train"), cfg.data.seq_len, document_masking=False)
    accum = cfg.trainer.grad_accum_for(dist.world_size)
    clock = _StepClock(warmup)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=cfg.trainer.micro_batch_size,
            gradient_accumulation_steps=accum,
            max_steps=warmup + steps,
            learning_rate=cfg.optim.lr,
            weight_decay=cfg.optim.weight_decay,
            adam_beta1=cfg.optim.betas[0],
            adam_beta2=cfg.optim.betas[1],
            adam_epsilon=cfg.optim.eps,
            max_grad_norm=cfg.trainer.grad_clip,
            lr_scheduler_type="cosine",
            warmup_steps=min(cfg.sched.warmup_steps, warmup + steps),
            bf16=cfg.trainer.precision == "bf16",
            fp16=cfg.trainer.precision == "fp16",
            gradient_checkpointing=cfg.model.gradient_checkpointing,
            logging_steps=10,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=cfg.data.loader_workers,
            use_cpu=dist.device.type == "cpu",
            seed=cfg.trainer.seed,
        )
        trainer = Trainer(model=model, args=args, train_dataset=_InputsOnly(windows), callbacks=[clock])
        trainer.train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        cfg.trainer.precision, DTYPES[cfg.model.dtype]
    )
    assert clock.start is not None, "the benchmark needs more steps than warm-up steps"
    return BenchResult(
        name="transformers.Trainer",
        steps=steps,
        tokens_per_step=cfg.trainer.global_batch_size * cfg.data.seq_len,
        step_time_s=(clock.end - clock.start) / steps,
        data_time_s=0.0,
        peak_memory_gib=peak_memory_gib(dist.device),
        flops_per_token=flops_per_token(model.config, cfg.data.seq_len),
        peak_flops=peak_flops(dist.device, dtype) * dist.world_size,
        world_size=dist.world_size,
        losses=clock.losses,
    )
