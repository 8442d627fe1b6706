"""Refuse to resume a run directory with a config that would change what the checkpoint means.

Each key a resume may not change is listed with the reason; a prefix (`data.sft`, `optim`) covers
its sub-keys. Every other key (max_steps, eval/save cadence, logging, attention backend,
activation checkpointing, loader workers, ...) takes effect on resume, so the `config.yaml` a
resumed run writes records only what is really in force.
"""

from __future__ import annotations

from llmtrain.config import ConfigError, TrainConfig, to_dict
from llmtrain.config.diff import flatten

FIXED_ON_RESUME: dict[str, tuple[str, ...]] = {
    "the model's shape": (
        "model.pretrained",
        "model.arch",
        "model.hidden_size",
        "model.intermediate_size",
        "model.num_layers",
        "model.num_heads",
        "model.num_kv_heads",
        "model.head_dim",
        "model.vocab_size",
        "model.tie_word_embeddings",
        "model.lora",
    ),
    "the token stream and its train/validation split": (
        "data.kind",
        "data.path",
        "data.format",
        "data.text_field",
        "data.text_split",
        "data.hf_split",
        "data.tokenizer",
        "data.seq_len",
        "data.document_masking",
        "data.val_fraction",
        "data.synthetic_docs",
        "data.sft",
    ),
    "the classifier's labels, its loss and its train/validation/test split": (
        "data.label_field",
        "data.text_pair_field",
        "data.val_path",
        "data.test_path",
        "data.test_fraction",
        "data.split_seed",
        "data.class_weights",
        "data.on_empty_text",
        "data.synthetic_labelled_rows",
    ),
    "the sample order": ("trainer.global_batch_size", "trainer.seed"),
    # The optimizer's hyperparameters and the schedule's base LR are restored from the checkpoint;
    # applying new values would need each engine's state rewritten, so they are refused instead.
    "the optimizer and LR schedule, which continue from the checkpoint": ("optim", "sched"),
}

RESUME_KEYS = tuple(key for keys in FIXED_ON_RESUME.values() for key in keys)


def _reason(key: str) -> str:
    return next(
        r for r, keys in FIXED_ON_RESUME.items() if any(key == k or key.startswith(k + ".") for k in keys)
    )


def check_resume_compatible(saved: TrainConfig, current: TrainConfig, where: str) -> None:
    a, b = flatten(to_dict(saved)), flatten(to_dict(current))
    fixed = [
        key
        for key in sorted(a.keys() | b.keys())
        if any(key == k or key.startswith(k + ".") for k in RESUME_KEYS) and a.get(key) != b.get(key)
    ]
    if fixed:
        lines = [f"{k}: checkpoint has {a.get(k)!r}, now {b.get(k)!r} ({_reason(k)})" for k in fixed]
        raise ConfigError(
            f"run.dir {where} holds a checkpoint these keys cannot change for:\n  "
            + "\n  ".join(lines)
            + "\nRestore these values to resume, or start a new run.dir (from this run's weights: "
            "`python launch/export_hf.py RUN OUT`, then model.pretrained=OUT)."
        )
