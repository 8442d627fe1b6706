"""The baseline: the same model, data, sequence length and global batch through `transformers.Trainer`.

Pretraining: the same windows. SFT: the same tokenized examples (same loss mask), batched the way a
Trainer user does it, one example per row padded to the longest in the batch
(`DataCollatorForSeq2Seq`); our side packs them (or not) as `data.sft.packing` says.
"""

from __future__ import annotations

import contextlib
import tempfile
import time

import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

from llmtrain.bench.ours import sync
from llmtrain.bench.result import BenchResult
from llmtrain.config import TrainConfig
from llmtrain.data import hf_trainer_samples
from llmtrain.dist import DistInfo
from llmtrain.metrics.memory import peak_memory_gib, tensor_bytes, track_peak_allocation
from llmtrain.metrics.throughput import mfu_peak_flops
from llmtrain.model.build import build_model
from llmtrain.model.flops import flops_per_token
from llmtrain.train.setup import RunData


class _SlotCounter:
    """Wraps the collator to count token slots (padding included) and real tokens per batch."""

    def __init__(self, collator) -> None:
        self.collator = collator
        self.slots = self.real = 0

    def __call__(self, features):
        batch = self.collator(features)
        self.slots += batch["input_ids"].numel()
        self.real += (
            int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        )
        return batch


class _StepClock(TrainerCallback):
    """Times the steps after `warmup` and measures one more step's peak allocation."""

    def __init__(self, warmup: int, steps: int, device: torch.device, counter: _SlotCounter | None) -> None:
        self.warmup, self.steps, self.device, self.counter = warmup, steps, device, counter
        self.start: float | None = None
        self.end = 0.0
        self.slots_at_start = self.real_at_start = 0
        self.losses: list[float] = []
        self.tracking = contextlib.ExitStack()
        self.step_peak = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.warmup + self.steps:  # the extra, untimed step
            self.step_peak = self.tracking.enter_context(track_peak_allocation(self.device))

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        if state.global_step == self.warmup:
            self.start = time.perf_counter()
            if self.counter is not None:
                self.slots_at_start, self.real_at_start = self.counter.slots, self.counter.real
        if state.global_step == self.warmup + self.steps:
            self.end = time.perf_counter()
            if self.counter is not None:
                # The collator runs one batch ahead of the step that uses it; over the window the
                # counts cover `steps` batches all the same.
                self.slots, self.real = (
                    self.counter.slots - self.slots_at_start,
                    self.counter.real - self.real_at_start,
                )
        if state.global_step == self.warmup + self.steps + 1:
            self.tracking.close()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def bench_hf_trainer(cfg: TrainConfig, dist: DistInfo, data: RunData, warmup: int, steps: int) -> BenchResult:
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg.model, len(data.tokenizer), dist.device)
    accum = cfg.trainer.grad_accum_for(dist.world_size)
    counter = None
    workers = cfg.data.loader_workers
    dataset, padded = hf_trainer_samples(cfg.data, data.shards_dir, "train")
    if padded:
        pad_id = data.manifest["tokenizer"]["pad_id"]
        data.tokenizer.pad_token_id = pad_id
        counter = _SlotCounter(DataCollatorForSeq2Seq(data.tokenizer, padding="longest"))
        workers = 0  # the slot counter must run in this process; padding a batch is cheap
    clock = _StepClock(warmup, steps, dist.device, counter)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=cfg.trainer.micro_batch_for(dist.world_size),
            gradient_accumulation_steps=accum,
            max_steps=warmup + steps + 1,
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
            # Like for like: with model.compile the Trainer compiles its model too (whole-model
            # torch.compile, the Trainer's only form).
            torch_compile=cfg.model.compile,
            logging_steps=10,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=workers,
            use_cpu=dist.device.type == "cpu",
            seed=cfg.trainer.seed,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=counter,
            callbacks=[clock],
        )
        trainer.train()
        # The resting state, as our strategies' memory_report counts it (gradients are freed between steps).
        params = list(model.parameters())
        states = [t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        memory = {
            "param_bytes": tensor_bytes(params),
            "grad_bytes": tensor_bytes(p for p in params if p.requires_grad),
            "optimizer_bytes": tensor_bytes(states),
        }
    assert clock.start is not None, "the benchmark needs more steps than warm-up steps"
    slot_tokens = cfg.trainer.global_batch_size * cfg.data.seq_len
    real_tokens = None
    if counter is not None:
        slot_tokens, real_tokens = clock.slots / steps, clock.real / steps
    return BenchResult(
        name="transformers.Trainer",
        steps=steps,
        tokens_per_step=slot_tokens,
        effective_tokens_per_step=real_tokens,
        step_time_s=(clock.end - clock.start) / steps,
        data_time_s=None,
        step_peak_bytes=clock.step_peak.bytes if clock.step_peak is not None else None,
        peak_memory_gib=peak_memory_gib(dist.device),
        flops_per_token=flops_per_token(model.config, cfg.data.seq_len),
        peak_flops=mfu_peak_flops(dist.device, cfg.trainer.precision, cfg.model.dtype, dist.world_size),
        world_size=dist.world_size,
        memory=memory,
        losses=clock.losses,
    )
