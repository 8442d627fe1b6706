"""Typed schema of every config key.

Hydra composes `conf/` against these dataclasses in strict mode, so a misspelt key or a value of
the wrong type fails before any work. `OmegaConf.to_object` then builds the dataclasses, which runs
each `__post_init__`: the checks there name the full key (`trainer.global_batch_size`) so the user
knows what to change. Defaults live here, not in the code that reads the config.

This module must not import torch: `launch/*.py --help`-style paths and config tests stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmtrain.config.checks import ConfigError, one_of, require
from llmtrain.config.data import DataConfig
from llmtrain.config.evaluation import EarlyStoppingConfig, check_reply_eval
from llmtrain.config.strategy import PARAM_DTYPES, DistConfig, ParallelConfig, StrategyConfig

ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "linear", "constant", "wsd")
LOGGERS = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class RunConfig:
    """Where a run lives. The same `dir` on a rerun resumes from its latest checkpoint."""

    name: str = "default"
    # Run directory. None: `runs/<name>/<timestamp>`, chosen once by rank 0 and shared with every rank.
    dir: str | None = None


@dataclass
class LoraConfig:
    """LoRA adapters via peft; `r=0` disables them."""

    r: int = 0
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def __post_init__(self) -> None:
        require(self.r >= 0, "model.lora.r", f"must be >= 0, got {self.r}")
        require(0.0 <= self.dropout < 1.0, "model.lora.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class ModelConfig:
    """A Hugging Face causal LM, built from the shape below or loaded from `pretrained`."""

    name: str = "tiny"
    # Local Hugging Face folder to load (weights + config). When set, the shape fields are ignored.
    pretrained: str | None = None
    # Hugging Face `model_type` of the architecture to build: llama, qwen2 or mistral.
    arch: str = "llama"
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    # None: the head dim is hidden_size // num_heads.
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    init_std: float = 0.02
    # None: the tokenizer's vocabulary size (rounded up to `vocab_multiple`).
    vocab_size: int | None = None
    vocab_multiple: int = 64
    # auto: flash_attention_2 where flash-attn imports and CUDA is present, else sdpa.
    attn_implementation: str = "auto"
    gradient_checkpointing: bool = False
    # With gradient_checkpointing: recompute every n-th decoder layer only (1 = all; selective
    # checkpointing trades memory back for speed when full checkpointing frees more than needed).
    checkpoint_every: int = 1
    # Dtype the parameters are stored in. Mixed precision (trainer.precision) keeps fp32 masters.
    dtype: str = "float32"
    # Tokens per chunk of the fused lm_head + cross-entropy (llmtrain/model/chunked_ce.py): the
    # [tokens, vocab] logits never exist whole. 0: full logits upcast to fp32, as transformers does.
    loss_chunk_tokens: int = 1024
    # Split every decoder layer's MLP over this many sequence shards (DeepSpeed's TiledMLP, from
    # Arctic Long Sequence Training): the [tokens, intermediate_size] activations exist one shard at
    # a time, and backward recomputes each shard's forward. 0: off. Tested alone and under ZeRO-3 +
    # parallel.sp; pays off at long data.seq_len, where the MLP's intermediates dominate activations.
    tiled_mlp: int = 0
    # torch.compile each decoder block (and the chunked loss's softmax passes) on first use.
    # Compiling takes seconds to minutes at start, and pays off over long runs.
    compile: bool = False
    # Liger's Triton kernels for RMSNorm, RoPE and SwiGLU (CUDA, `pip install 'llmtrain[liger]'`).
    liger: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        one_of(self.arch, "model.arch", ("llama", "qwen2", "mistral"))
        one_of(self.attn_implementation, "model.attn_implementation", ATTN_IMPLEMENTATIONS)
        one_of(self.dtype, "model.dtype", PARAM_DTYPES)
        require(
            self.checkpoint_every >= 1, "model.checkpoint_every", f"must be >= 1, got {self.checkpoint_every}"
        )
        require(
            self.loss_chunk_tokens >= 0,
            "model.loss_chunk_tokens",
            f"must be >= 0, got {self.loss_chunk_tokens}",
        )
        require(self.tiled_mlp >= 0, "model.tiled_mlp", f"must be >= 0 (0 = off), got {self.tiled_mlp}")
        for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            require(getattr(self, key) > 0, f"model.{key}", f"must be > 0, got {getattr(self, key)}")
        if self.pretrained is None and self.head_dim is None:
            require(
                self.hidden_size % self.num_heads == 0,
                "model.hidden_size",
                f"{self.hidden_size} is not divisible by model.num_heads={self.num_heads}; set model.head_dim",
            )
        require(
            self.num_heads % self.num_kv_heads == 0,
            "model.num_kv_heads",
            f"model.num_heads={self.num_heads} must be a multiple of model.num_kv_heads={self.num_kv_heads}",
        )


@dataclass
class TrainerConfig:
    """The step loop: how long, how big a batch, how often to log, evaluate and save."""

    max_steps: int = 300
    # Sequences per optimizer step across all ranks = micro × accumulation × data-parallel size.
    global_batch_size: int = 16
    # Sequences per forward on each rank. None: global_batch_size / (data-parallel size ×
    # grad_accum_steps, default 1), so the same command runs on any number of ranks that divides it.
    micro_batch_size: int | None = None
    # None: derived from global_batch_size / (micro_batch_size × data-parallel size).
    grad_accum_steps: int | None = None
    # fp32, or bf16/fp16 autocast over fp32 master weights (fp16 adds dynamic loss scaling).
    precision: str = "fp32"
    # Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged).
    grad_clip: float = 1.0
    log_every: int = 10
    # 0 disables periodic validation (the final one still runs when there is validation data).
    eval_every: int = 100
    # Validation set size in global batches (eval_batches × global_batch_size samples, the same
    # samples at any micro_batch_size or world size), evaluated in micro-batches.
    eval_batches: int = 20
    save_every: int = 100
    # Checkpoints kept on disk; older ones are deleted after a newer one is committed.
    keep_last: int = 2
    seed: int = 1234
    # auto: cuda when available, else cpu.
    device: str = "auto"
    # Stop (and report) after this many consecutive non-finite losses.
    max_nonfinite_steps: int = 3
    # SFT: user messages answered (greedy) at every evaluation, logged to the console and metrics.
    sample_prompts: list[str] = field(default_factory=list)
    sample_max_new_tokens: int = 48
    # SFT: greedily answer the first N validation examples at every evaluation and log
    # val_exact_match, val_bleu (sacrebleu) and val_rouge_l (rouge-score F-measure); 0: off.
    eval_generate: int = 0
    # New tokens per generated answer. None: the longest reference among them (plus its end token).
    eval_generate_max_new_tokens: int | None = None
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    # Keep the best evaluation's checkpoint (of early_stopping.metric, or val_loss when early
    # stopping is off) whatever keep_last deletes. Always on while early stopping is on.
    keep_best: bool = False

    @property
    def best_metric(self) -> tuple[str, str] | None:
        """(metric, mode) whose best evaluation is tracked and kept, or None."""
        if self.early_stopping.metric is not None:
            return self.early_stopping.metric, self.early_stopping.mode
        return ("val_loss", "min") if self.keep_best else None

    def __post_init__(self) -> None:
        require(self.max_steps > 0, "trainer.max_steps", f"must be > 0, got {self.max_steps}")
        one_of(self.precision, "trainer.precision", PRECISIONS)
        one_of(self.device, "trainer.device", ("auto", "cpu", "cuda"))
        for key in ("global_batch_size", "log_every", "save_every", "keep_last"):
            require(getattr(self, key) > 0, f"trainer.{key}", f"must be > 0, got {getattr(self, key)}")
        if self.micro_batch_size is not None:
            require(
                self.micro_batch_size > 0,
                "trainer.micro_batch_size",
                f"must be > 0 or null, got {self.micro_batch_size}",
            )
        require(self.eval_every >= 0, "trainer.eval_every", f"must be >= 0, got {self.eval_every}")
        require(
            self.sample_max_new_tokens > 0,
            "trainer.sample_max_new_tokens",
            f"must be > 0, got {self.sample_max_new_tokens}",
        )
        require(self.eval_generate >= 0, "trainer.eval_generate", f"must be >= 0, got {self.eval_generate}")
        if self.eval_generate_max_new_tokens is not None:
            require(
                self.eval_generate_max_new_tokens > 0,
                "trainer.eval_generate_max_new_tokens",
                f"must be > 0 or null, got {self.eval_generate_max_new_tokens}",
            )
        if self.early_stopping.metric is not None:
            require(
                self.eval_every > 0,
                "trainer.early_stopping.metric",
                f"={self.early_stopping.metric} needs periodic evaluations; trainer.eval_every is 0",
            )
        require(self.grad_clip >= 0, "trainer.grad_clip", f"must be >= 0, got {self.grad_clip}")
        if self.grad_accum_steps is not None:
            require(
                self.grad_accum_steps > 0,
                "trainer.grad_accum_steps",
                f"must be > 0, got {self.grad_accum_steps}",
            )

    def micro_batch_for(self, dp_size: int) -> int:
        """`micro_batch_size`, or when null global / (dp × grad_accum_steps or 1)."""
        if self.micro_batch_size is not None:
            return self.micro_batch_size
        accum = self.grad_accum_steps or 1
        if self.global_batch_size % (dp_size * accum):
            raise ConfigError(
                f"trainer.global_batch_size={self.global_batch_size} is not divisible by data-parallel size "
                f"{dp_size} × trainer.grad_accum_steps={accum}; set trainer.micro_batch_size, or a global "
                "batch that the number of ranks divides"
            )
        return self.global_batch_size // (dp_size * accum)

    def grad_accum_for(self, dp_size: int) -> int:
        """Accumulation steps that make micro × accumulation × dp equal the global batch."""
        micro = self.micro_batch_for(dp_size)
        per_step = micro * dp_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"trainer.global_batch_size={self.global_batch_size} is not a multiple of "
                f"trainer.micro_batch_size={micro} × data-parallel size {dp_size}"
            )
        accum = self.global_batch_size // per_step
        if self.grad_accum_steps is not None and self.grad_accum_steps != accum:
            raise ConfigError(
                f"trainer.grad_accum_steps={self.grad_accum_steps} contradicts global_batch_size="
                f"{self.global_batch_size} / (micro_batch_size={micro} × dp={dp_size}) = {accum}; "
                "set one of them to null"
            )
        return accum


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    # Fused AdamW kernel where torch supports it on the device (auto: on CUDA).
    fused: str = "auto"

    def __post_init__(self) -> None:
        one_of(self.name, "optim.name", ("adamw",))
        require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        require(len(self.betas) == 2, "optim.betas", f"needs two values, got {list(self.betas)}")
        # `optim.fused=true` on the command line arrives as the YAML boolean, stringified "True".
        self.fused = str(self.fused).lower()
        one_of(self.fused, "optim.fused", ("auto", "true", "false"))


@dataclass
class SchedConfig:
    """Learning-rate schedule: linear warmup, then the named shape down to min_lr_ratio × lr."""

    name: str = "cosine"
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    # wsd only: share of the steps after warmup spent decaying (the rest is stable at peak lr).
    decay_fraction: float = 0.2

    def __post_init__(self) -> None:
        one_of(self.name, "sched.name", SCHEDULES)
        require(self.warmup_steps >= 0, "sched.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(
            0 <= self.min_lr_ratio <= 1, "sched.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}"
        )
        require(
            0 < self.decay_fraction <= 1,
            "sched.decay_fraction",
            f"must be in (0, 1], got {self.decay_fraction}",
        )


@dataclass
class LoggerConfig:
    """Console and metrics.jsonl always; W&B when name=wandb (rank 0 only)."""

    name: str = "none"
    project: str = "llmtrain"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    # None: derived from the run name and the overrides that differ from the defaults.
    run_name: str | None = None
    notes: str | None = None
    mode: str = "offline"

    def __post_init__(self) -> None:
        one_of(self.name, "logger.name", LOGGERS)
        one_of(self.mode, "logger.mode", WANDB_MODES)


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def __post_init__(self) -> None:
        if self.trainer.precision == "fp16" and self.model.dtype != "float32":
            raise ConfigError(
                f"trainer.precision=fp16 needs fp32 master weights; model.dtype is {self.model.dtype!r}"
            )
        if self.model.pretrained is None and self.model.max_position_embeddings < self.data.seq_len:
            raise ConfigError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_position_embeddings="
                f"{self.model.max_position_embeddings}"
            )
        self._check_parallel()
        check_reply_eval(self.trainer.eval_generate, self.data)
        if self.strategy.zero_stage is not None and self.model.dtype != "float32":
            require(
                self.trainer.precision != "fp32",
                "model.dtype",
                f"model.dtype={self.model.dtype} with trainer.precision=fp32 under DeepSpeed: DeepSpeed keeps "
                "the parameters in the dtype trainer.precision names; set trainer.precision=bf16 instead",
            )

    def _check_parallel(self) -> None:
        """Mesh degrees against the strategy and the model shape (the world size is checked when the
        job starts, `llmtrain.dist.ParallelDims`)."""
        par, model = self.parallel, self.model
        if par.sp > 1 and self.data.kind == "classify":
            raise ConfigError(
                f"parallel.sp={par.sp} with data.kind=classify is not supported (the head pools one "
                "token per row, which sequence parallelism splits off to another rank); use parallel.sp=1"
            )
        if par.sp > 1:
            # Ulysses runs on FSDP2 (our all-to-alls) and on DeepSpeed (its UlyssesSPAttentionHF).
            require(
                self.strategy.name == "fsdp" or self.strategy.is_deepspeed,
                "parallel.sp",
                f"parallel.sp={par.sp} needs strategy=fsdp or a DeepSpeed strategy (zero1|zero2|zero3); "
                f"strategy={self.strategy.name} does not support it",
            )
        for key in ("tp", "dp_replicate"):
            if getattr(par, key) > 1:
                engine = (
                    f"DeepSpeed (strategy={self.strategy.name}) has no DTensor mesh; "
                    if self.strategy.is_deepspeed
                    else f"strategy={self.strategy.name} does not support it; "
                )
                require(
                    self.strategy.name == "fsdp",
                    f"parallel.{key}",
                    f"parallel.{key}={getattr(par, key)} needs strategy=fsdp (DTensor/FSDP2 mesh): "
                    f"{engine}use strategy=fsdp or parallel.{key}=1",
                )
        if par.tp > 1:
            require(
                self.trainer.precision != "fp16",
                "parallel.tp",
                "parallel.tp > 1 with trainer.precision=fp16 is not supported; use bf16",
            )
            if model.pretrained is None:
                for key, value in (
                    ("num_heads", model.num_heads),
                    ("num_kv_heads", model.num_kv_heads),
                    ("intermediate_size", model.intermediate_size),
                ):
                    require(
                        value % par.tp == 0,
                        "parallel.tp",
                        f"parallel.tp={par.tp} does not divide model.{key}={value} (each tensor-parallel "
                        "rank takes an equal share of the heads and MLP columns)",
                    )
        if par.sp > 1:
            require(
                self.data.seq_len % par.sp == 0,
                "parallel.sp",
                f"parallel.sp={par.sp} does not divide data.seq_len={self.data.seq_len} (each sequence-parallel "
                "rank takes an equal contiguous slice of every sequence)",
            )
            require(
                model.attn_implementation in ("auto", "sdpa"),
                "parallel.sp",
                f"parallel.sp={par.sp} wraps PyTorch SDPA attention; model.attn_implementation="
                f"{model.attn_implementation} is not supported with it, use sdpa",
            )
            if model.pretrained is None:
                # With tp, Ulysses splits each tensor-parallel rank's num_heads / tp heads over sp.
                split = par.sp * par.tp
                by = f"parallel.sp={par.sp}" + (f" × parallel.tp={par.tp} = {split}" if par.tp > 1 else "")
                for key, value in (("num_heads", model.num_heads), ("num_kv_heads", model.num_kv_heads)):
                    require(
                        value % split == 0,
                        "parallel.sp",
                        f"{by} does not divide model.{key}={value} (attention runs on whole sequences "
                        "for an equal share of the query and key/value heads"
                        + (", the tensor-parallel rank's heads split over sp)" if par.tp > 1 else ")"),
                    )
