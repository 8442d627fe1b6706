"""Typed schema of every config key.

Hydra composes `conf/` against these dataclasses in strict mode, so a misspelt key or a value of
the wrong type fails before any work. `OmegaConf.to_object` then builds the dataclasses, which runs
each `__post_init__`: the checks there name the full key (`trainer.global_batch_size`) so the user
knows what to change. Defaults live here, not in the code that reads the config.

This module must not import torch: `launch/*.py --help`-style paths and config tests stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A config value is missing, malformed or inconsistent with another value."""


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _one_of(value: str, key: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, f"got {value!r}, expected one of {', '.join(choices)}")


ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
PRECISIONS = ("fp32", "bf16", "fp16")
PARAM_DTYPES = ("float32", "bfloat16", "float16")
STRATEGIES = ("single", "zero1", "zero2", "zero3", "zero3_offload", "fsdp")
SCHEDULES = ("cosine", "linear", "constant", "wsd")
DATA_FORMATS = ("auto", "text", "jsonl", "parquet", "hf", "synthetic")
DATA_KINDS = ("pretrain", "sft")
# SFT: how a row is read into a conversation (`auto` looks at the first row's fields).
SFT_FORMATS = ("auto", "alpaca", "sharegpt", "messages", "synthetic")
CHAT_TEMPLATES = ("auto", "tokenizer", "chatml", "llama3", "alpaca")
SFT_TRUNCATIONS = ("drop", "truncate_turns")
BAD_EXAMPLE_POLICIES = ("skip", "error")
TEXT_SPLITS = ("paragraph", "line", "file")
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
        _require(self.r >= 0, "model.lora.r", f"must be >= 0, got {self.r}")
        _require(0.0 <= self.dropout < 1.0, "model.lora.dropout", f"must be in [0, 1), got {self.dropout}")


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
    # torch.compile each decoder block (and the chunked loss's softmax passes) on first use.
    # Compiling takes seconds to minutes at start, and pays off over long runs.
    compile: bool = False
    # Liger's Triton kernels for RMSNorm, RoPE and SwiGLU (CUDA, `pip install 'llmtrain[liger]'`).
    liger: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        _one_of(self.arch, "model.arch", ("llama", "qwen2", "mistral"))
        _one_of(self.attn_implementation, "model.attn_implementation", ATTN_IMPLEMENTATIONS)
        _one_of(self.dtype, "model.dtype", PARAM_DTYPES)
        _require(
            self.checkpoint_every >= 1, "model.checkpoint_every", f"must be >= 1, got {self.checkpoint_every}"
        )
        _require(
            self.loss_chunk_tokens >= 0,
            "model.loss_chunk_tokens",
            f"must be >= 0, got {self.loss_chunk_tokens}",
        )
        for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            _require(getattr(self, key) > 0, f"model.{key}", f"must be > 0, got {getattr(self, key)}")
        if self.pretrained is None and self.head_dim is None:
            _require(
                self.hidden_size % self.num_heads == 0,
                "model.hidden_size",
                f"{self.hidden_size} is not divisible by model.num_heads={self.num_heads}; set model.head_dim",
            )
        _require(
            self.num_heads % self.num_kv_heads == 0,
            "model.num_kv_heads",
            f"model.num_heads={self.num_heads} must be a multiple of model.num_kv_heads={self.num_kv_heads}",
        )


@dataclass
class DataConfig:
    """Where training text comes from, how it is tokenized, and how it is cut into samples."""

    name: str = "synthetic"
    # pretrain: documents cut into windows; sft: conversations with loss on assistant turns only.
    kind: str = "pretrain"
    # Raw source: a file, a directory, a glob, or `hf:NAME` for a Hugging Face dataset.
    path: str | None = None
    # pretrain: text|jsonl|parquet|hf|synthetic|auto. sft: alpaca|sharegpt|messages|synthetic|auto.
    format: str = "synthetic"
    # Field holding the text in jsonl / parquet / Hugging Face rows.
    text_field: str = "text"
    # How plain-text files are cut into documents.
    text_split: str = "paragraph"
    # Split of a Hugging Face dataset to read.
    hf_split: str = "train"
    # `byte` (built in, needs no file), a sentencepiece `.model` file, or a Hugging Face tokenizer folder.
    tokenizer: str = "byte"
    # Tokens per training sample (the model sees seq_len inputs and seq_len shifted labels).
    seq_len: int = 256
    # Share of documents held out for validation (split by document, never inside one).
    val_fraction: float = 0.02
    # Tokenized shards are cached here under a key of (source, tokenizer, prep settings).
    cache_dir: str = "data_cache"
    # Explicit folder of shards from `launch/prepare_data.py`; overrides the cache lookup.
    shards_dir: str | None = None
    # Tokens per shard file written by data preparation.
    shard_tokens: int = 50_000_000
    # Worker processes for data preparation. None: all cores.
    prep_workers: int | None = None
    # Documents of the synthetic corpus (format=synthetic).
    synthetic_docs: int = 4000
    # Mask attention across document boundaries inside a sample (and restart position ids).
    document_masking: bool = False
    # DataLoader worker processes feeding the training loop (0: load in the training process).
    loader_workers: int = 1
    prefetch_factor: int = 4

    # --- SFT (kind=sft) ---
    # auto: the tokenizer's own chat_template when it has one, else chatml. `tokenizer` insists on it.
    chat_template: str = "auto"
    # System message added to conversations that have none (some templates require one).
    system_prompt: str | None = None
    # Train on every token (prompts too), not only assistant replies.
    train_on_prompt: bool = False
    # Conversations longer than seq_len + 1 tokens: drop them, or keep the leading whole turns.
    truncation: str = "truncate_turns"
    # Several examples per sequence, attention and positions separated per example.
    packing: bool = False
    # Rename fields: canonical name -> the dataset's field, e.g. {instruction: prompt, output: response}.
    # Canonical names: instruction input output system history conversations messages tools role content.
    fields: dict[str, str] = field(default_factory=dict)
    # Extra role names: the dataset's role value -> user|assistant|system|tool|tool_call.
    role_names: dict[str, str] = field(default_factory=dict)
    # Use only the first N examples of the source (None: all).
    max_examples: int | None = None
    # A malformed example: skip it (counted, first reasons logged, listed in the manifest) or stop.
    on_bad_example: str = "skip"
    # Conversations of the generated instruction set (format=synthetic, kind=sft).
    synthetic_examples: int = 3000

    def __post_init__(self) -> None:
        _one_of(self.kind, "data.kind", DATA_KINDS)
        _one_of(self.format, "data.format", SFT_FORMATS if self.kind == "sft" else DATA_FORMATS)
        _one_of(self.chat_template, "data.chat_template", CHAT_TEMPLATES)
        _one_of(self.truncation, "data.truncation", SFT_TRUNCATIONS)
        _one_of(self.on_bad_example, "data.on_bad_example", BAD_EXAMPLE_POLICIES)
        if self.max_examples is not None:
            _require(
                self.max_examples > 0, "data.max_examples", f"must be > 0 or null, got {self.max_examples}"
            )
        if self.packing:
            _require(self.kind == "sft", "data.packing", "packs SFT examples; it needs data.kind=sft")
            _require(
                self.document_masking,
                "data.document_masking",
                "must be true when data.packing=true, or packed examples would attend to each other",
            )
        _one_of(self.text_split, "data.text_split", TEXT_SPLITS)
        _require(self.seq_len > 0, "data.seq_len", f"must be > 0, got {self.seq_len}")
        _require(
            0.0 <= self.val_fraction < 1.0, "data.val_fraction", f"must be in [0, 1), got {self.val_fraction}"
        )
        _require(self.shard_tokens > 0, "data.shard_tokens", f"must be > 0, got {self.shard_tokens}")
        if self.format != "synthetic":
            _require(
                self.path is not None or self.shards_dir is not None,
                "data.path",
                "is required (a file, directory, glob or hf:NAME) unless data.shards_dir is set",
            )


@dataclass
class TrainerConfig:
    """The step loop: how long, how big a batch, how often to log, evaluate and save."""

    max_steps: int = 300
    # Sequences per optimizer step across all ranks = micro × accumulation × data-parallel size.
    global_batch_size: int = 16
    micro_batch_size: int = 16
    # None: derived from global_batch_size / (micro_batch_size × data-parallel size).
    grad_accum_steps: int | None = None
    # fp32, or bf16/fp16 autocast over fp32 master weights (fp16 adds dynamic loss scaling).
    precision: str = "fp32"
    # Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged).
    grad_clip: float = 1.0
    log_every: int = 10
    # 0 disables periodic validation (the final one still runs when there is validation data).
    eval_every: int = 100
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

    def __post_init__(self) -> None:
        _require(self.max_steps > 0, "trainer.max_steps", f"must be > 0, got {self.max_steps}")
        _one_of(self.precision, "trainer.precision", PRECISIONS)
        _one_of(self.device, "trainer.device", ("auto", "cpu", "cuda"))
        for key in ("global_batch_size", "micro_batch_size", "log_every", "save_every", "keep_last"):
            _require(getattr(self, key) > 0, f"trainer.{key}", f"must be > 0, got {getattr(self, key)}")
        _require(self.eval_every >= 0, "trainer.eval_every", f"must be >= 0, got {self.eval_every}")
        _require(
            self.sample_max_new_tokens > 0,
            "trainer.sample_max_new_tokens",
            f"must be > 0, got {self.sample_max_new_tokens}",
        )
        _require(self.grad_clip >= 0, "trainer.grad_clip", f"must be >= 0, got {self.grad_clip}")
        if self.grad_accum_steps is not None:
            _require(
                self.grad_accum_steps > 0,
                "trainer.grad_accum_steps",
                f"must be > 0, got {self.grad_accum_steps}",
            )

    def grad_accum_for(self, dp_size: int) -> int:
        """Accumulation steps that make micro × accumulation × dp equal the global batch."""
        per_step = self.micro_batch_size * dp_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"trainer.global_batch_size={self.global_batch_size} is not a multiple of "
                f"trainer.micro_batch_size={self.micro_batch_size} × data-parallel size {dp_size}"
            )
        accum = self.global_batch_size // per_step
        if self.grad_accum_steps is not None and self.grad_accum_steps != accum:
            raise ConfigError(
                f"trainer.grad_accum_steps={self.grad_accum_steps} contradicts global_batch_size="
                f"{self.global_batch_size} / (micro_batch_size={self.micro_batch_size} × dp={dp_size}) = {accum}; "
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
        _one_of(self.name, "optim.name", ("adamw",))
        _require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _require(len(self.betas) == 2, "optim.betas", f"needs two values, got {list(self.betas)}")
        # `optim.fused=true` on the command line arrives as the YAML boolean, stringified "True".
        self.fused = str(self.fused).lower()
        _one_of(self.fused, "optim.fused", ("auto", "true", "false"))


@dataclass
class SchedConfig:
    """Learning-rate schedule: linear warmup, then the named shape down to min_lr_ratio × lr."""

    name: str = "cosine"
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    # wsd only: share of the steps after warmup spent decaying (the rest is stable at peak lr).
    decay_fraction: float = 0.2

    def __post_init__(self) -> None:
        _one_of(self.name, "sched.name", SCHEDULES)
        _require(self.warmup_steps >= 0, "sched.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(
            0 <= self.min_lr_ratio <= 1, "sched.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}"
        )
        _require(
            0 < self.decay_fraction <= 1,
            "sched.decay_fraction",
            f"must be in (0, 1], got {self.decay_fraction}",
        )


@dataclass
class StrategyConfig:
    """How the model is distributed. `name` picks the implementation; other keys tune it."""

    name: str = "single"
    # DeepSpeed: generated config keys, and a dict merged over the generated JSON for anything else.
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    # Elements per gradient-reduction bucket. DeepSpeed's own default (5e8) costs ZeRO-1/2 with
    # overlap_comm two buffers of that many elements whatever the model's size: +3.4 GiB a rank at
    # fp32 on a 9M-parameter model, for no measured speed (docs/performance.md). 5e7 is the order of
    # Megatron-LM's gradient buckets (4e7).
    reduce_bucket_size: int = 50_000_000
    ds_config: dict[str, Any] = field(default_factory=dict)
    # FSDP2: reshard parameters after forward (ZeRO-3 like) or keep them (ZeRO-2 like).
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    # Dtype gradients are reduced in under mixed precision.
    reduce_dtype: str = "float32"
    # Collective timeout: a dead rank makes the others fail after this long instead of hanging.
    timeout_s: int = 600

    def __post_init__(self) -> None:
        _one_of(self.name, "strategy.name", STRATEGIES)
        _require(0 <= self.zero_stage <= 3, "strategy.zero_stage", f"must be 0..3, got {self.zero_stage}")
        _one_of(self.reduce_dtype, "strategy.reduce_dtype", PARAM_DTYPES)


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
        _one_of(self.name, "logger.name", LOGGERS)
        _one_of(self.mode, "logger.mode", WANDB_MODES)


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
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
