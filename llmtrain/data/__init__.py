"""Raw text to training batches, by one of three pipelines chosen by `data.kind`.

- `pretrain/`: documents -> tokenized shards -> fixed-length windows cut across documents.
- `sft/`: rows -> conversations -> chat-templated ids with loss masks -> one or packed examples per row.
- `classify/`: labelled rows -> label set, stratified split -> token ids with one class id per row.

They share `tokenizer/`, `cache.py` (manifest, splits, publishing a prepared folder), the sampler,
collate and the loaders. This module is the one place that asks which pipeline a config uses:
everything outside `llmtrain.data` calls the functions below and never tests `data.kind` itself.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from llmtrain.config import DataConfig
from llmtrain.data.cache import check_manifest, read_manifest
from llmtrain.data.classify.dataset import ClassifyExamples, HFClassifyExamples, classify_rows
from llmtrain.data.classify.prepare import describe_classify, ensure_classify_cache, save_classify_settings
from llmtrain.data.collate import collate
from llmtrain.data.errors import DataError
from llmtrain.data.pretrain.mixture import ensure_mixture, source_folders
from llmtrain.data.pretrain.parts import merge_parts, prepare_part
from llmtrain.data.pretrain.prepare import describe_shards, ensure_shards, prepare_shards
from llmtrain.data.pretrain.windows import PretrainWindows, UnshiftedWindows
from llmtrain.data.sft.chat_templates import ChatTemplate
from llmtrain.data.sft.chat_templates import save_chat_settings as _save_chat_settings
from llmtrain.data.sft.dataset import Reply, SFTExamples, UnshiftedExamples, last_replies, sft_rows
from llmtrain.data.sft.prepare import describe_examples, ensure_sft_cache, sft_template
from llmtrain.data.shards import TokenShards

__all__ = [
    "chat_template",
    "check_manifest",
    "class_weights",
    "classify_labels",
    "describe",
    "ensure_prepared",
    "Reply",
    "held_out_replies",
    "hf_trainer_samples",
    "merge_parts",
    "prepare_part",
    "samples",
    "save_chat_settings",
]


def ensure_prepared(cfg: DataConfig, out: Path | None = None) -> Path:
    """The prepared folder (shards or SFT examples) for `cfg`, built if missing.

    Without `out`: `data.shards_dir` if set, else the cache entry under `data.cache_dir`. With
    `out` (`launch/prepare_data.py --out`): pretraining shards are written there (it must not exist
    yet); SFT examples are built there unless it already holds them.
    """
    if cfg.kind == "sft":
        return ensure_sft_cache(cfg if out is None else dataclasses.replace(cfg, shards_dir=str(out)))
    if cfg.sources:
        if out is not None:
            raise DataError(
                "data.sources: each source is prepared into the cache (data.cache_dir); --out takes one "
                "corpus (data.path), whose folder a source can then name as its shards_dir"
            )
        return ensure_mixture(cfg)
    if cfg.kind == "classify":
        return ensure_classify_cache(cfg if out is None else dataclasses.replace(cfg, shards_dir=str(out)))
    if out is not None:
        return prepare_shards(cfg, out, workers=cfg.prep_workers)
    return ensure_shards(cfg)


def describe(cfg: DataConfig, folder: Path) -> str:
    """A few lines saying what a prepared folder holds (for `launch/prepare_data.py`)."""
    if cfg.sources:
        return "\n".join(
            [f"mixture: {folder}"] + [describe_shards(f) for f in source_folders(cfg, folder).values()]
        )
    if cfg.kind == "classify":
        return describe_classify(folder)
    return describe_examples(folder) if cfg.kind == "sft" else describe_shards(folder)


def samples(cfg: DataConfig, folder: Path, split: str) -> tuple[Dataset, Any]:
    """(dataset, collate function) of one split: pretraining windows, SFT rows (packed or not), or
    classification examples."""
    if cfg.kind == "classify":
        return classify_rows(folder, split)
    if cfg.kind == "sft":
        return sft_rows(cfg, folder, split)
    return PretrainWindows(TokenShards(folder, split), cfg.seq_len, cfg.document_masking), collate


def hf_trainer_samples(cfg: DataConfig, folder: Path, split: str) -> tuple[Dataset, bool]:
    """(dataset in `transformers.Trainer`'s convention, whether its rows differ in length).

    Trainer shifts labels itself, so labels are unshifted. Pretraining: whole windows, labels =
    inputs, all the same length. SFT: one example per row, -100 off the trained tokens; rows of
    different lengths need a padding collator. Classification: token ids and a class id per row.
    """
    if cfg.kind == "classify":
        return HFClassifyExamples(ClassifyExamples(folder, split)), True
    if cfg.kind == "sft":
        return UnshiftedExamples(SFTExamples(folder, split)), True
    if cfg.sources:
        raise DataError("data.sources: the transformers.Trainer comparison reads one corpus (data.path)")
    windows = PretrainWindows(TokenShards(folder, split), cfg.seq_len, document_masking=False)
    return UnshiftedWindows(windows), False


def held_out_replies(
    cfg: DataConfig, folder: Path, limit: int | None = None, split: str = "val"
) -> list[Reply]:
    """SFT examples of `split` as (prompt, last reply) pairs, the first `limit` of them."""
    if cfg.kind != "sft":
        raise ValueError(f"held-out replies are SFT examples; data.kind is {cfg.kind}")
    return last_replies(folder, split, limit)


def chat_template(cfg: DataConfig, tokenizer: Any) -> ChatTemplate | None:
    """The chat template that training, evaluation samples and generation use; None for pretraining."""
    return sft_template(cfg, tokenizer) if cfg.kind == "sft" else None


def save_chat_settings(cfg: DataConfig, folder: Path) -> None:
    """For SFT, record the chat template and system prompt beside the run's tokenizer (exports carry
    it, so `launch/generate.py` formats prompts as training did); for classification the fields and
    seq_len (`launch/evaluate.py` reads new files as training did); nothing for pretraining."""
    if cfg.kind == "classify":
        save_classify_settings(folder, cfg)
    if cfg.kind == "sft":
        _save_chat_settings(folder, cfg.sft.chat_template, cfg.sft.system_prompt)


def classify_labels(cfg: DataConfig, folder: Path) -> list[str] | None:
    """The class names in id order for a classification run (the model's head size); None otherwise."""
    if cfg.kind != "classify":
        return None
    return list(read_manifest(folder)["labels"])


def class_weights(cfg: DataConfig, folder: Path) -> list[float] | None:
    """Per-class weights of the classification loss, or None (unweighted, or not classification).

    `auto` is scikit-learn's "balanced" rule, n_samples / (n_classes × count), from the training split.
    """
    if cfg.kind != "classify" or cfg.class_weights == "none":
        return None
    manifest = read_manifest(folder)
    names = manifest["labels"]
    if cfg.class_weights == "auto":
        counts = manifest["splits"]["train"]["class_counts"]
        total = sum(counts.values())
        return [total / (len(names) * counts[n]) for n in names]
    weights = list(cfg.class_weights)
    if len(weights) != len(names):
        raise DataError(
            f"data.class_weights has {len(weights)} weights but the training set has {len(names)} classes "
            f"({names}); give one weight per class in that order, or auto"
        )
    return weights
