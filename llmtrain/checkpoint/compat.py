"""Refuse to resume a run directory with a config that would change what the checkpoint means."""

from __future__ import annotations

from typing import Any

from llmtrain.config import ConfigError, TrainConfig, to_dict

# Keys that change the model's shape, the token stream or the sample order. Everything else
# (max_steps, eval/save cadence, logging, attention backend, checkpointing) may change on resume.
RESUME_KEYS = (
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
    "data.path",
    "data.format",
    "data.sft.format",
    "data.text_field",
    "data.tokenizer",
    "data.seq_len",
    "data.document_masking",
    "trainer.global_batch_size",
    "trainer.seed",
    "optim.name",
)


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def check_resume_compatible(saved: TrainConfig, current: TrainConfig, where: str) -> None:
    a, b = to_dict(saved), to_dict(current)
    diffs = [
        f"{k}: checkpoint has {_get(a, k)!r}, now {_get(b, k)!r}"
        for k in RESUME_KEYS
        if _get(a, k) != _get(b, k)
    ]
    if diffs:
        raise ConfigError(
            f"run.dir {where} holds a checkpoint from an incompatible config:\n  "
            + "\n  ".join(diffs)
            + "\nUse a new run.dir, or restore these values to resume."
        )
