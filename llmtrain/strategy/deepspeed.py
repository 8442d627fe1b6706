"""DeepSpeed ZeRO 1/2/3 (optionally offloaded to CPU) behind the `Strategy` interface.

The DeepSpeed JSON config is generated from our typed config (batch sizes, precision, clipping,
ZeRO stage and offload) and `strategy.deepspeed.config` is deep-merged over it, so any DeepSpeed key can
still be reached (in a conf/strategy file, or `+strategy.deepspeed.config.zero_optimization.KEY=VALUE` on
the command line). We bring our own optimizer and LR schedule; DeepSpeed owns the engine, the loss
scaler, gradient reduction, clipping and the sharded checkpoint format.

The engine has opinions that differ from the loop's contract; each is mapped here and nowhere else:
- it averages gradients over data-parallel ranks and divides the loss by gradient_accumulation_steps,
  while the loop hands us losses already normalised to their share of the global token mean and
  wants the SUM of contributions: we scale by what it divides by (`_grad_divisor`, the dp size
  without sp) and pass `scale_wrt_gas=False`;
- it counts micro-batches in `engine.step()`: we call it after every micro-batch (off-boundary calls
  only advance the counter) and check its idea of the accumulation boundary against the loop's.

With `parallel.sp > 1` the engine gets an `mpu` from our mesh and attention runs through
DeepSpeed's Ulysses (`llmtrain.strategy.deepspeed_ulysses`); the batch is sliced as on FSDP.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as tdist
from deepspeed.accelerator import get_accelerator
from deepspeed.utils import safe_get_full_fp32_param
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from llmtrain.config import ConfigError, TrainConfig
from llmtrain.dist import DistInfo, data_parallel_mesh, ensure_process_group
from llmtrain.metrics.memory import tensor_bytes
from llmtrain.model.loss import CausalLMLoss
from llmtrain.optim import build_optimizer, param_groups
from llmtrain.strategy.base import StepResult, Strategy
from llmtrain.strategy.build_lock import clear_stale_deepspeed_build_locks

log = logging.getLogger(__name__)

# Fixed tag of the one DeepSpeed checkpoint inside a step folder: our layout already names the step.
CHECKPOINT_TAG = "zero"
# Our CausalLMLoss wraps the HF model as `.model`; HF names are the ones below it.
MODULE_PREFIX = "model."


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged into a copy of `base`: nested dicts merge key by key, other values replace."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_ds_config(cfg: TrainConfig, dp_size: int, device: torch.device) -> dict[str, Any]:
    """The DeepSpeed JSON config for this run: generated keys, then `strategy.deepspeed.config` over them."""
    stage = cfg.strategy.zero_stage
    trainer, strat = cfg.trainer, cfg.strategy.deepspeed
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": strat.overlap_comm,
        "contiguous_gradients": strat.contiguous_gradients,
        "reduce_bucket_size": strat.reduce_bucket_size,
    }
    # Pinned host buffers only help (and only work) with a CUDA device to copy to.
    pin = device.type == "cuda"
    if strat.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if strat.offload_params:  # stage 3 only: checked by the schema
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    generated: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": trainer.micro_batch_for(dp_size),
        "gradient_accumulation_steps": trainer.grad_accum_for(dp_size),
        "train_batch_size": trainer.global_batch_size,
        # 0 disables clipping in DeepSpeed too; its clip coefficient matches clip_grad_norm_'s.
        "gradient_clipping": trainer.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": trainer.precision == "bf16"},
        # Dynamic loss scaling with torch.amp.GradScaler's defaults (init 2**16, grow after 2000
        # clean steps), so fp16 behaves like the single strategy's. loss_scale 0 means dynamic.
        "fp16": {
            "enabled": trainer.precision == "fp16",
            "loss_scale": 0,
            "initial_scale_power": 16,
            "loss_scale_window": 2000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        # We log steps ourselves; DeepSpeed's own progress lines would duplicate them.
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if cfg.parallel.sp > 1 and stage == 3:
        # The reduce-scatter path is the one whose gradient divisor we rely on (`_grad_divisor`).
        zero["reduce_scatter"] = True
    merged = deep_merge(generated, strat.config)
    if cfg.parallel.sp > 1 and stage == 3 and not merged["zero_optimization"].get("reduce_scatter", True):
        raise ConfigError(
            "strategy.deepspeed.config.zero_optimization.reduce_scatter=false with parallel.sp > 1 under ZeRO-3: "
            "DeepSpeed's all-reduce path then divides some gradient buckets by dp and others (larger than "
            "reduce_bucket_size) by dp × sp, so the gradients would be wrong; leave reduce_scatter on"
        )
    return merged


def _join_deepspeed(device: torch.device, timeout_s: int) -> None:
    """Hand DeepSpeed the job's process group (a 1-rank one when alone: `ensure_process_group`).

    With torch.distributed already initialised, `deepspeed.init_distributed` only wraps the existing
    group, so our bounded timeout (`dist.timeout_s`) is the one every ZeRO collective runs under.
    """
    ensure_process_group(device, timeout_s)
    deepspeed.init_distributed(
        dist_backend=tdist.get_backend(), timeout=datetime.timedelta(seconds=timeout_s)
    )
    _unlink_shm_allreduce_buffer()


def _unlink_shm_allreduce_buffer() -> None:
    """Remove this rank's name for DeepSpeed's shared-memory allreduce buffer; keep the memory.

    On the CPU accelerator with every rank on one machine, `init_distributed` gives each rank a
    66 MB POSIX shared-memory segment, `/dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_
    <MASTER_PORT>_<rank>`, and maps every peer's. DeepSpeed never unlinks them, so each run with a
    new port leaves world_size × 66 MB of RAM behind: on our CI machine a day of runs filled the
    24 GB tmpfs and the kernel OOM-killed the test suite. Once every rank has mapped every peer's
    segment (all of them are past `init_distributed`, hence the barrier), the names are no longer
    needed; unlinking now frees the memory when the processes exit, however they exit.
    """
    # A lone rank gets a segment too (the 1-rank group a `python launch/train.py strategy=zero2` or a
    # resume on one process makes), so it is unlinked as well.
    if get_accelerator().device_name() != "cpu" or sys.platform != "linux":
        return
    tdist.barrier()
    name = "_".join(
        (
            "deepspeed_allreduce_buffer",
            str(os.getuid()),
            os.environ.get("MASTER_ADDR", ""),
            os.environ.get("MASTER_PORT", ""),
            str(tdist.get_rank()),
        )
    )
    Path("/dev/shm", name).unlink(missing_ok=True)


class DeepSpeedStrategy(Strategy):
    """ZeRO stage from `strategy.name` (zero1, zero2, zero3, zero3_offload)."""

    # ZeRO partitions are cut per rank; DeepSpeed's universal-checkpoint conversion covers only some
    # layouts, so a checkpoint resumes on the world size that wrote it (llmtrain.checkpoint says how
    # to carry the weights elsewhere).
    reshards = False
    sequence_parallel: Any = None  # DeepSpeedUlysses with parallel.sp > 1

    def __init__(self, cfg: TrainConfig, dist: DistInfo) -> None:
        super().__init__(cfg, dist)
        self.name = cfg.strategy.name
        self.stage = cfg.strategy.zero_stage
        if cfg.trainer.precision == "fp16" and not get_accelerator().is_fp16_supported():
            raise ConfigError(
                f"trainer.precision=fp16: DeepSpeed's {get_accelerator().device_name()} accelerator does not "
                "support fp16 here; use trainer.precision=bf16 or fp32 (fp16 needs a GPU)"
            )
        # DeepSpeed logs its whole config and every engine detail at INFO; we log the config once.
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)

    def setup(self, module: CausalLMLoss, lr_lambda: Callable[[int], float]) -> None:
        self.module = module
        self.ds_config = build_ds_config(self.cfg, self.dp_size, self.dist.device)
        offload = "offload_optimizer" in self.ds_config["zero_optimization"]
        # The ops DeepSpeed JIT-loads next: shared-memory collectives (CPU accelerator), CPU Adam.
        ops = ["ShareMemCommBuilder"] + (["CPUAdamBuilder"] if offload else [])
        clear_stale_deepspeed_build_locks(ops, self.dist.local_rank)
        _join_deepspeed(self.dist.device, self.cfg.dist.timeout_s)
        log.info("deepspeed config:\n%s", json.dumps(self.ds_config, indent=2))
        mpu = self._apply_sequence_parallel(module) if self.dims.sp > 1 else None
        self.basic_optimizer = self._build_optimizer(module, offload)
        # A callable, so the LambdaLR is built on the optimizer DeepSpeed actually steps. Owned by the
        # engine, it is stepped only on applied updates and saved/loaded with the engine checkpoint.
        self.engine, _, _, _ = deepspeed.initialize(
            model=module,
            optimizer=self.basic_optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda),
            config=self.ds_config,
            dist_init_required=False,
            mpu=mpu,
        )
        if self.stage == 3 and module.loss_chunk_tokens:
            # The chunked loss multiplies by the lm_head weight directly instead of calling the
            # lm_head module, whose hooks are what gathers a ZeRO-3 partition: tell DeepSpeed to
            # gather it around the root module's forward instead.
            deepspeed.zero.register_external_parameter(self.engine.module, module.lm_head_weight())

    def _apply_sequence_parallel(self, module: CausalLMLoss) -> Any:
        """Route attention through DeepSpeed's Ulysses on our mesh's sp group; the engine's `mpu`."""
        from llmtrain.strategy.deepspeed_ulysses import DeepSpeedUlysses, UlyssesGroups

        meshes = data_parallel_mesh(self.dist.device, self.dims)
        self.sequence_parallel = DeepSpeedUlysses(meshes.sp_group)
        self.sequence_parallel.apply(module.model)
        return UlyssesGroups(meshes)

    @property
    def _grad_divisor(self) -> int:
        """What the engine divides the reduced gradients by; the loop wants their plain sum.

        Without sp: the data-parallel size. Under sp DeepSpeed reduces over the dp × sp ranks but
        divides by different sizes on different paths (0.19): ZeRO-1/2 by dp only (summing the
        sequence-parallel contributions), ZeRO-3's reduce-scatter (`reduce_scatter_coalesced`,
        pinned on under sp by `build_ds_config`) by dp × sp. Measured: with the dp size alone, every ZeRO-3
        gradient came out exactly half the one-process gradient at sp=2.
        """
        if self.stage == 3:
            return self.dims.dp * self.dims.sp
        return self.dims.dp

    def local_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.sequence_parallel is None:
            return batch
        return self.sequence_parallel.local_batch(batch)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        sp = self.sequence_parallel
        if sp is None or batch["labels"] is None:  # generation: every rank holds the whole prompt
            return super().forward(batch)
        if batch.get("document_ids") is not None:  # the document mask spans the whole sequence
            batch = {**batch, "document_ids": sp.full_document_ids(batch["document_ids"])}
        with sp.active():
            return super().forward(batch)

    def _build_optimizer(self, module: CausalLMLoss, offload: bool) -> torch.optim.Optimizer:
        """Our AdamW; DeepSpeed's CPU Adam when optimizer states live on the host.

        ZeRO-Offload refuses a torch optimizer by default (`zero_force_ds_cpu_optimizer`): stepping
        fp32 states on the host is only fast with its vectorised kernel (JIT-built on first use).
        """
        if not offload:
            return build_optimizer(self.cfg.optim, module, self.dist.device)
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        o = self.cfg.optim
        return DeepSpeedCPUAdam(
            param_groups(module, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps, adamw_mode=True
        )

    @property
    def wrapped(self) -> torch.nn.Module:
        return self.engine

    def autocast(self) -> contextlib.AbstractContextManager:
        # No autocast: with bf16/fp16 enabled DeepSpeed holds the module's weights in that dtype
        # (fp32 masters in the optimizer), so the forward already computes in it; the loss is fp32
        # (CausalLMLoss upcasts the logits). Autocast on top would only add casts.
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, is_last_micro: bool) -> None:
        # DeepSpeed uses the boundary flag during backward to decide when to reduce gradients; if
        # its micro-step count disagreed with ours, gradients would be reduced at the wrong time.
        if self.engine.is_gradient_accumulation_boundary() != is_last_micro:
            raise RuntimeError(
                f"DeepSpeed's accumulation boundary ({self.engine.is_gradient_accumulation_boundary()}) "
                f"disagrees with the loop's (is_last_micro={is_last_micro}): its "
                f"gradient_accumulation_steps={self.engine.gradient_accumulation_steps()} must equal the "
                "number of micro-batches per step (do not override it in strategy.deepspeed.config)"
            )
        # The engine averages gradients over ranks (the loop wants their sum, `_grad_divisor`) and
        # by default divides by gradient_accumulation_steps (the loop already normalised the loss).
        self.engine.backward(loss * self._grad_divisor, scale_wrt_gas=False)
        if not is_last_micro:
            # Off the boundary engine.step() only advances DeepSpeed's micro-step counter.
            self.engine.step()

    def step(self) -> StepResult:
        fp16 = self.cfg.trainer.precision == "fp16"
        scale_before = float(self.engine.optimizer.loss_scale) if fp16 else None
        skipped_before = self.engine.skipped_steps
        self.engine.step()  # reduce (stage 1), clip, optimizer and schedule step, zero gradients
        norm = self.engine.get_global_grad_norm()
        grad_norm = torch.as_tensor(math.nan if norm is None else norm, dtype=torch.float32).detach()
        # DeepSpeed skips the update (weights, optimizer state and schedule untouched) on fp16
        # overflow and, in the ZeRO optimizers of recent releases (checked with 0.19), on a
        # non-finite bf16/fp32 norm too (bf16.check_grad_overflow, on by default).
        skipped = self.engine.skipped_steps > skipped_before
        if not skipped and norm is not None and not math.isfinite(norm):
            raise RuntimeError(
                f"DeepSpeed {deepspeed.__version__} applied an update with gradient norm {norm}: the weights "
                "are no longer finite. Use a DeepSpeed release whose ZeRO optimizer skips such steps, and "
                "keep strategy.deepspeed.config from setting bf16.check_grad_overflow=false"
            )
        return StepResult(
            grad_norm=grad_norm,
            skipped=torch.tensor(skipped),
            loss_scale=None if scale_before is None else torch.tensor(scale_before),
        )

    def lr(self) -> float:
        return self.engine.lr_scheduler.get_last_lr()[0]

    def save(self, path: Path) -> None:
        # Collective: each rank writes its own optimizer (and, for ZeRO-3, parameter) partition.
        self.engine.save_checkpoint(str(path), tag=CHECKPOINT_TAG, save_latest=False)

    def load(self, path: Path) -> None:
        load_path, _ = self.engine.load_checkpoint(
            str(path), tag=CHECKPOINT_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise FileNotFoundError(f"{path}/{CHECKPOINT_TAG}: no DeepSpeed checkpoint to load")

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """fp32 master weights (HF names) on rank 0. Collective: every rank must call it.

        `safe_get_full_fp32_param` assembles a parameter from its optimizer partitions on every
        stage (ZeRO-3 also gathers the sharded parameter), so all ranks walk the parameters in the
        same order. Frozen parameters have no fp32 master; they are gathered as stored.
        """
        out: dict[str, torch.Tensor] = {}
        seen: dict[int, torch.Tensor | None] = {}
        for name, p in self.hf_model.named_parameters(remove_duplicate=False):
            if id(p) not in seen:
                full = safe_get_full_fp32_param(p) if p.requires_grad else None
                if full is None:
                    with deepspeed.zero.GatheredParameters([p], enabled=hasattr(p, "ds_id")):
                        full = p.detach().clone()
                seen[id(p)] = full.detach().to("cpu", torch.float32) if self.dist.is_main else None
            out[name] = seen[id(p)]
        if not self.dist.is_main:
            return None
        persistent = self.hf_model.state_dict().keys()
        out.update({n: b.detach().cpu() for n, b in self.hf_model.named_buffers() if n in persistent})
        return out

    @classmethod
    def consolidate(cls, path: Path) -> dict[str, torch.Tensor]:
        """fp32 weights from the ZeRO partitions of every stage, in one process, on CPU."""
        state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=CHECKPOINT_TAG)
        return {k.removeprefix(MODULE_PREFIX): v for k, v in state.items()}

    def memory_report(self) -> dict[str, int]:
        """What this rank holds under its ZeRO stage.

        Parameters: ZeRO-3 keeps only its partition (`ds_tensor`) between uses. Optimizer: the
        fp32 master partition (a copy even in fp32 mode) and the AdamW moments, all partitioned
        from stage 1 on. Gradients: DeepSpeed frees and reuses its buffers between steps, so we
        report what the stage keeps per step: a full copy (stage 1) or this rank's share (2, 3),
        accumulated in fp32 (the grad dtype of the masters).
        """
        params = list(self.module.parameters())
        param_bytes = tensor_bytes(p.ds_tensor for p in params) if self.stage == 3 else tensor_bytes(params)
        trainable = sum(p.ds_numel if self.stage == 3 else p.numel() for p in params if p.requires_grad)
        # ZeRO partitions over every data- and sequence-parallel rank (dp × sp).
        grad_numel = trainable if self.stage == 1 else math.ceil(trainable / self.dims.fsdp)
        states = [t for s in self.basic_optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        # The ZeRO optimizer owns the flat fp32 master partitions (stage 3 / stage 1-2 attribute);
        # it hands them to our optimizer's param_groups only while it steps.
        zero = self.engine.optimizer
        masters = getattr(zero, "fp32_partitioned_groups_flat", None) or zero.single_partition_of_fp32_groups
        return {
            "param_bytes": param_bytes,
            "grad_bytes": grad_numel * 4,
            "optimizer_bytes": tensor_bytes(states) + tensor_bytes(masters),
        }
