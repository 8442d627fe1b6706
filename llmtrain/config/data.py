"""Schema of `data.*`: where training text comes from, how it is tokenized and cut into samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmtrain.config.checks import one_of, require

DATA_FORMATS = ("auto", "text", "jsonl", "parquet", "hf", "synthetic", "csv", "json")
DATA_KINDS = ("pretrain", "sft", "classify")
CLASS_WEIGHTS = ("none", "auto")
# SFT: how a row is read into a conversation (`auto` looks at the first row's fields).
SFT_FORMATS = ("auto", "alpaca", "sharegpt", "messages", "synthetic")
CHAT_TEMPLATES = ("auto", "tokenizer", "chatml", "llama3", "alpaca")
SFT_TRUNCATIONS = ("drop", "truncate_turns")
BAD_EXAMPLE_POLICIES = ("skip", "error")
TEXT_SPLITS = ("paragraph", "line", "file")


@dataclass
class SFTConfig:
    """`data.sft.*`: how SFT rows become conversations, chat-templated ids and loss masks (kind=sft)."""

    # How a row is read into a conversation: alpaca|sharegpt|messages|synthetic|auto (`auto` looks
    # at the first row's fields).
    format: str = "synthetic"
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
    # Conversations of the generated instruction set (data.sft.format=synthetic).
    synthetic_examples: int = 3000

    def __post_init__(self) -> None:
        one_of(self.format, "data.sft.format", SFT_FORMATS)
        one_of(self.chat_template, "data.sft.chat_template", CHAT_TEMPLATES)
        one_of(self.truncation, "data.sft.truncation", SFT_TRUNCATIONS)
        one_of(self.on_bad_example, "data.sft.on_bad_example", BAD_EXAMPLE_POLICIES)
        if self.max_examples is not None:
            require(
                self.max_examples > 0,
                "data.sft.max_examples",
                f"must be > 0 or null, got {self.max_examples}",
            )


@dataclass
class SourceConfig:
    """One entry of `data.sources`: a corpus with its share of the training tokens.

    Each source is prepared into its own shards (cached under its own hash, so adding a source
    prepares only that one); seq_len, tokenizer, val_fraction and shard_tokens are `data.*`'s.
    """

    # Names the source in metrics (`tokens/<name>`, `val_loss/<name>`) and in its cache folder.
    name: str = ""
    # As data.path: a file, a directory, a glob or hf:NAME. Or leave it null and set shards_dir.
    path: str | None = None
    # Share of the training tokens (weights are normalised; 0 leaves the source out of training).
    weight: float = 1.0
    # Passes over this source's training windows before it stops being drawn (None: no limit);
    # the other sources then share its part of the batch in proportion to their weights.
    max_epochs: float | None = None
    # text|jsonl|parquet|hf|auto (auto: from each file's extension).
    format: str = "auto"
    text_field: str = "text"
    text_split: str = "paragraph"
    hf_split: str = "train"
    # Must equal data.tokenizer when set: one model, one vocabulary.
    tokenizer: str | None = None
    # A folder of prepared shards (launch/prepare_data.py --out, or a SLURM-merged one) instead of path.
    shards_dir: str | None = None


@dataclass
class DataConfig:
    """Where training text comes from, how it is tokenized, and how it is cut into samples."""

    name: str = "synthetic"
    # pretrain: documents cut into windows; sft: conversations with loss on assistant turns only.
    kind: str = "pretrain"
    # Raw source: a file, a directory, a glob, or `hf:NAME` for a Hugging Face dataset.
    path: str | None = None
    # Pretraining source: text|jsonl|parquet|hf|synthetic|auto (SFT rows: data.sft.format).
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
    # Pretraining from several corpora at set token shares (replaces data.path); see SourceConfig.
    sources: list[SourceConfig] = field(default_factory=list)
    # The mixture's token shares equal the weights (to one window per source) over every block of
    # this many steps: per-block quotas by largest remainder, see llmtrain/data/mixture.py.
    mixture_block_steps: int = 10

    # kind=sft whose replies are label words: score each validation example by the likelihood of
    # each choice given its prompt and log accuracy/precision/recall/F1 of the argmax.
    choices: list[str] = field(default_factory=list)

    # kind=sft: row format, chat template, loss masking, packing.
    sft: SFTConfig = field(default_factory=SFTConfig)

    # kind=classify: the label column (strings or ints), an optional second text (a sentence
    # pair), held-out files, and class weights of the loss (auto: n / (classes × count), sklearn's
    # "balanced"; or one weight per class in label order).
    label_field: str = "label"
    text_pair_field: str | None = None
    val_path: str | None = None
    test_path: str | None = None
    # Without test_path: share of the examples held out for the test split (stratified, seeded).
    test_fraction: float = 0.0
    # Seed of the stratified train/val/test split (kept apart from trainer.seed: changing the
    # training seed must not move examples between splits).
    split_seed: int = 0
    class_weights: Any = "none"
    # A row with an empty text: stop with an error naming it, or skip it (counted and named in the
    # manifest and the log).
    on_empty_text: str = "error"
    # Examples of the generated classification set (kind=classify, format=synthetic).
    synthetic_labelled_rows: int = 1200

    def __post_init__(self) -> None:
        one_of(self.kind, "data.kind", DATA_KINDS)
        require(
            self.format in DATA_FORMATS or self.format not in SFT_FORMATS,
            "data.format",
            f"is the pretraining source format; an SFT row format ({self.format!r}) is set with "
            f"data.sft.format={self.format}",
        )
        one_of(self.format, "data.format", DATA_FORMATS)
        require(
            self.kind == "classify" or self.format not in ("csv", "json"),
            "data.format",
            f"{self.format} is read for data.kind=classify only (pretraining: text, jsonl, parquet, hf)",
        )
        if self.sft.packing:
            require(self.kind == "sft", "data.sft.packing", "packs SFT examples; it needs data.kind=sft")
            require(
                self.document_masking,
                "data.document_masking",
                "must be true when data.sft.packing=true, or packed examples would attend to each other",
            )
        one_of(self.text_split, "data.text_split", TEXT_SPLITS)
        require(
            len(set(self.choices)) == len(self.choices) and all(c.strip() for c in self.choices),
            "data.choices",
            f"must be distinct non-empty label words, got {list(self.choices)}",
        )
        require(
            len(self.choices) != 1, "data.choices", f"needs at least two choices, got {list(self.choices)}"
        )
        if self.kind == "classify":
            self._check_classify()
        require(self.seq_len > 0, "data.seq_len", f"must be > 0, got {self.seq_len}")
        require(
            0.0 <= self.val_fraction < 1.0, "data.val_fraction", f"must be in [0, 1), got {self.val_fraction}"
        )
        require(self.shard_tokens > 0, "data.shard_tokens", f"must be > 0, got {self.shard_tokens}")
        if self.sources:
            check_sources(self)
            return
        source_format = self.sft.format if self.kind == "sft" else self.format
        format_key = "data.sft.format" if self.kind == "sft" else "data.format"
        if source_format != "synthetic":
            require(
                self.path is not None or self.shards_dir is not None,
                "data.path",
                "is required (a file, directory, glob or hf:NAME) unless data.shards_dir is set",
            )
        else:
            # Generated data reads no file: a path given anyway would be silently ignored.
            require(
                self.path is None,
                "data.path",
                f"is set ({self.path}) but data={self.name} generates its data ({format_key}=synthetic) "
                "and would ignore it; pick a data group that reads files (data=tinyshakespeare, c4_demo, "
                f"alpaca_demo, ...) or set {format_key} to the file's format",
            )

    def _check_classify(self) -> None:
        require(
            0.0 <= self.test_fraction < 1.0 and self.val_fraction + self.test_fraction < 1.0,
            "data.test_fraction",
            f"must be in [0, 1) with data.val_fraction + data.test_fraction < 1, got {self.test_fraction}",
        )
        require(not self.sft.packing, "data.sft.packing", "does not apply to data.kind=classify")
        one_of(self.on_empty_text, "data.on_empty_text", ("error", "skip"))
        weights = self.class_weights
        if isinstance(weights, str):
            one_of(weights, "data.class_weights", CLASS_WEIGHTS)
        else:
            require(
                isinstance(weights, (list, tuple)) and len(weights) > 0,
                "data.class_weights",
                f"must be auto, none or a list of one weight per class, got {weights!r}",
            )
            require(
                all(isinstance(w, (int, float)) and w > 0 for w in weights),
                "data.class_weights",
                f"weights must be positive numbers, got {list(weights)}",
            )
            self.class_weights = [float(w) for w in weights]


def check_sources(cfg: DataConfig) -> None:
    """`data.sources`: names unique and non-empty, weights valid, one tokenizer, a path or shards each."""
    require(cfg.kind == "pretrain", "data.sources", f"mixes pretraining corpora; data.kind is {cfg.kind!r}")
    for key in ("path", "shards_dir"):
        require(
            getattr(cfg, key) is None,
            f"data.{key}",
            f"is set ({getattr(cfg, key)}) but data.sources is too; give each source its own path",
        )
    require(
        cfg.mixture_block_steps > 0, "data.mixture_block_steps", f"must be > 0, got {cfg.mixture_block_steps}"
    )
    seen: dict[str, int] = {}
    for i, src in enumerate(cfg.sources):
        key = f"data.sources[{i}]"
        require(bool(src.name), f"{key}.name", "is required (it names the source in metrics and caches)")
        require(
            src.name.replace("_", "").replace("-", "").isalnum(),
            f"{key}.name",
            f"{src.name!r} must be letters, digits, '_' or '-' (it becomes a metric name and a folder)",
        )
        key = f"{key} ({src.name})"
        require(
            src.name not in seen,
            f"{key}.name",
            f"{src.name!r} is given twice (data.sources[{seen.get(src.name)}] and [{i}]); names must be unique",
        )
        seen[src.name] = i
        require(src.weight >= 0, f"{key}.weight", f"must be >= 0, got {src.weight}")
        if src.max_epochs is not None:
            require(src.max_epochs > 0, f"{key}.max_epochs", f"must be > 0 or null, got {src.max_epochs}")
        require(
            (src.path is None) != (src.shards_dir is None),
            f"{key}.path",
            "is required (a file, directory, glob or hf:NAME), or set shards_dir instead (not both)",
        )
        one_of(src.format, f"{key}.format", ("auto", "text", "jsonl", "parquet", "hf"))
        one_of(src.text_split, f"{key}.text_split", TEXT_SPLITS)
        require(
            src.tokenizer is None or src.tokenizer == cfg.tokenizer,
            f"{key}.tokenizer",
            f"is {src.tokenizer!r} but data.tokenizer is {cfg.tokenizer!r}: every source must be "
            "tokenized with the model's one tokenizer; drop the key or make them equal",
        )
    require(
        sum(src.weight for src in cfg.sources) > 0,
        "data.sources",
        "every weight is 0; give at least one source a weight > 0",
    )
