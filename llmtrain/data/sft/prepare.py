"""SFT rows → tokenized examples with loss masks on disk, cached, audited before training starts.

Layout (the pretraining shard manifest's keys, so `check_manifest` and the loop's log read it too):

    manifest.json              tokenizer identity, dtype, per-split counts, the audit, the settings
    train/tokens.bin           every kept example's token ids, concatenated (uint16 or uint32)
    train/loss_mask.bin        uint8 per token: 1 where the token is a training target
    train/offsets.npy          int64 start of each example, plus the total at the end
    val/...

The cache key covers the data files' contents, the tokenizer, the chat template (its text, not just
its name) and every setting that changes the ids or masks, so a rerun reuses the folder and any
change makes a new one. Examples go to train or val by a hash of their index (as pretraining
documents do), so the split does not move when other examples are added or dropped.

Rank 0 prepares while the other ranks wait in a barrier bounded by `dist.timeout_s`: a set
that takes longer than that to tokenize makes the waiting ranks fail with a collective timeout.
Prepare it ahead with `python launch/prepare_data.py data=...` (same config) on big sets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmtrain.config import DataConfig
from llmtrain.data.cache import (
    FORMAT_VERSION,
    MANIFEST,
    SPLITS,
    is_val_document,
    publish,
    read_manifest,
    shard_dtype,
)
from llmtrain.data.errors import DataError
from llmtrain.data.sft.chat_templates import ChatTemplate, NamedTemplate, TemplateError, resolve_chat_template
from llmtrain.data.sft.formats import Conversation, detect_format, to_conversation
from llmtrain.data.sft.records import Record, iter_records, source_fingerprint
from llmtrain.data.sft.synthetic import GENERATOR_VERSION, generate_conversations
from llmtrain.data.sft.tokenize import TOO_LONG, SFTAudit, tokenize_conversation
from llmtrain.data.tokenizer.load import load_tokenizer, tokenizer_identity

log = logging.getLogger("llmtrain")

# 2: conversations tokenized once as one text (ids changed for sentencepiece tokenizers).
SFT_LAYOUT_VERSION = 2
SYNTHETIC_SEED = 0


def sft_template(cfg: DataConfig, tokenizer: Any) -> ChatTemplate:
    """The chat template training, evaluation and generation all use for this config."""
    return resolve_chat_template(cfg.sft.chat_template, tokenizer, cfg.sft.system_prompt)


def _template_identity(template: ChatTemplate) -> dict[str, Any]:
    if isinstance(template, NamedTemplate):
        return {"name": template.name, "spec": template.spec.__dict__, "system": template.system_prompt}
    return {
        "name": template.name,
        "jinja": template.tokenizer.chat_template,
        "system": template.system_prompt,
    }


def sft_settings(cfg: DataConfig) -> dict[str, Any]:
    """The config keys that change which examples are kept and how they are tokenized."""
    return {
        "layout_version": SFT_LAYOUT_VERSION,
        "format": cfg.sft.format,
        "seq_len": cfg.seq_len,
        "truncation": cfg.sft.truncation,
        "train_on_prompt": cfg.sft.train_on_prompt,
        "fields": dict(cfg.sft.fields),
        "role_names": dict(cfg.sft.role_names),
        "max_examples": cfg.sft.max_examples,
        "val_fraction": cfg.val_fraction,
        "hf_split": cfg.hf_split,
        "on_bad_example": cfg.sft.on_bad_example,
        "synthetic": [cfg.sft.synthetic_examples, GENERATOR_VERSION]
        if cfg.sft.format == "synthetic"
        else None,
    }


def sft_cache_key(cfg: DataConfig, tokenizer: Any, template: ChatTemplate) -> str:
    sources = source_fingerprint(cfg) if cfg.sft.format != "synthetic" else []
    ident = tokenizer_identity(tokenizer)
    payload = {
        "format_version": FORMAT_VERSION,
        "sources": [{k: v for k, v in s.items() if k != "file"} for s in sources],
        "tokenizer": {"vocab_size": ident["vocab_size"], "fingerprint": ident["fingerprint"]},
        "template": _template_identity(template),
        "settings": sft_settings(cfg),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def ensure_sft_cache(cfg: DataConfig) -> Path:
    """The prepared folder for `cfg` (`data.shards_dir`, or the cache entry, built if missing)."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    if cfg.shards_dir is not None:
        out = Path(cfg.shards_dir)
    else:
        template = sft_template(cfg, tokenizer)
        out = Path(cfg.cache_dir) / f"{cfg.name}-sft-{sft_cache_key(cfg, tokenizer, template)[:12]}"
    if (out / MANIFEST).is_file():
        audit = json.loads((out / MANIFEST).read_text())["audit"]
        log.info("sft data (cached in %s): %s", out, audit["summary"])
        return out
    log.info("preparing sft data=%s into %s", cfg.name, out)
    return prepare_sft(cfg, out)


def describe_examples(folder: Path) -> str:
    """What a prepared SFT folder holds: its audit summary."""
    return f"sft examples: {folder}\n  {read_manifest(folder)['audit']['summary']}"


def iter_conversations(cfg: DataConfig, audit: SFTAudit) -> Iterator[tuple[int, str, Conversation]]:
    """(example index, where, conversation) for every well-formed row; malformed rows are counted in
    `audit` and skipped, or raised with `data.sft.on_bad_example=error`."""
    if cfg.sft.format == "synthetic":
        rows: Iterator[Record] = (
            Record(row, "synthetic", i)
            for i, row in enumerate(generate_conversations(cfg.sft.synthetic_examples, SYNTHETIC_SEED))
        )
    else:
        rows = iter_records(cfg)
    fmt = None if cfg.sft.format == "auto" else cfg.sft.format
    for index, record in enumerate(rows):
        if cfg.sft.max_examples is not None and index >= cfg.sft.max_examples:
            break
        audit.examples_read += 1
        try:
            fmt = fmt or detect_format(record.row, cfg.sft.fields, record.where)
            conv = to_conversation(record.row, fmt, record.where, cfg.sft.fields, cfg.sft.role_names)
        except DataError as exc:
            if cfg.sft.on_bad_example == "error":
                raise
            audit.skip(exc)
            continue
        yield index, record.where, conv


def prepare_sft(cfg: DataConfig, out_dir: Path) -> Path:
    """Read, normalise, tokenize, audit and write `out_dir` (atomically); returns it."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    template = sft_template(cfg, tokenizer)
    identity = tokenizer_identity(tokenizer)
    dtype = shard_dtype(identity["vocab_size"])
    audit = SFTAudit()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    started = time.perf_counter()
    try:
        writers = {split: _ExampleWriter(tmp / split, dtype) for split in SPLITS}
        for index, where, conv in iter_conversations(cfg, audit):
            audit.check_placeholders(conv, where)
            try:
                example, outcome = tokenize_conversation(
                    conv, template, cfg.seq_len + 1, cfg.sft.truncation, cfg.sft.train_on_prompt, where
                )
            except TemplateError:
                raise  # a template that cannot work is not one bad example
            except DataError as exc:
                if cfg.sft.on_bad_example == "error":
                    raise
                audit.skip(exc)
                continue
            if example is None:
                if outcome == "too_long":
                    audit.dropped_too_long += 1
                else:
                    audit.dropped_no_trainable_left += 1
                continue
            audit.add(example, template.end_token_id)
            writers["val" if is_val_document(index, cfg.val_fraction) else "train"].add(example)
        end_token = (
            tokenizer.convert_ids_to_tokens(template.end_token_id)
            if template.end_token_id is not None
            else None
        )
        audit.check(cfg.name, template.end_token_id, end_token)
        if writers["train"].num_docs == 0:
            raise DataError(
                f"data={cfg.name}: every kept example went to validation; lower data.val_fraction"
            )
        summary = audit.summary()
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": "sft",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "name": cfg.name,
            "tokenizer": identity,
            "dtype": dtype.name,
            "chat_template": template.name,
            "end_token": {"id": template.end_token_id, "token": end_token},
            "splits": {split: w.close() for split, w in writers.items()},
            "audit": {**audit.to_dict(), "summary": summary},
            "sources": source_fingerprint(cfg) if cfg.sft.format != "synthetic" else [],
            "settings": {**sft_settings(cfg), "path": cfg.path, "tokenizer": cfg.tokenizer},
            "prep_seconds": round(time.perf_counter() - started, 3),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        _log_audit(cfg, audit, out_dir)
        if cfg.val_fraction > 0 and writers["val"].num_docs == 0:
            log.warning(
                "data=%s: the validation split is empty: none of the %d kept examples fell in "
                "data.val_fraction=%g, so there is no validation loss; use more examples or a larger "
                "data.val_fraction",
                cfg.name,
                audit.kept,
                cfg.val_fraction,
            )
        return publish(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _log_audit(cfg: DataConfig, audit: SFTAudit, out_dir: Path) -> None:
    log.info("sft data=%s: %s", cfg.name, audit.summary())
    if audit.skipped_malformed:
        log.warning(
            "data=%s: skipped %d malformed examples (by kind: %s); e.g. %s; all counted in %s",
            cfg.name,
            audit.skipped_malformed,
            dict(audit.skip_kinds.most_common(5)),
            audit.skip_reasons[0],
            out_dir / MANIFEST,
        )
    if audit.skipped_empty_reply:
        log.warning(
            "data=%s: skipped %d examples with an empty assistant reply (they would train only the end "
            "token); counted in %s",
            cfg.name,
            audit.skipped_empty_reply,
            out_dir / MANIFEST,
        )
    if audit.dropped_too_long:
        log.warning(
            "data=%s: dropped %d examples as %s=%d (data.sft.truncation=%s); raise data.seq_len to keep them",
            cfg.name,
            audit.dropped_too_long,
            TOO_LONG,
            cfg.seq_len,
            cfg.sft.truncation,
        )
    if audit.dropped_no_trainable_left:
        log.warning(
            "data=%s: dropped %d examples with no trainable token", cfg.name, audit.dropped_no_trainable_left
        )
    if audit.placeholder_examples:
        log.warning(
            "data=%s: %d examples hold template placeholders (%s), e.g. %s; they are trained literally. "
            "Fill them in (e.g. replace {{name}} with the model's name) or remove those examples",
            cfg.name,
            audit.placeholder_examples,
            ", ".join(f"{k} x{v}" for k, v in audit.placeholders.most_common(5)),
            audit.placeholder_example,
        )
    if audit.examples_without_end_label:
        log.warning(
            "data=%s: %d kept examples do not end with an end-of-turn label",
            cfg.name,
            audit.examples_without_end_label,
        )


class _ExampleWriter:
    """Appends examples (ids + loss mask) of one split; `close` writes the offsets."""

    def __init__(self, root: Path, dtype: np.dtype) -> None:
        root.mkdir(parents=True)
        self.root, self.dtype = root, dtype
        self._tokens = (root / "tokens.bin").open("wb")
        self._mask = (root / "loss_mask.bin").open("wb")
        self._offsets = [0]
        self.num_docs = self.num_tokens = self.num_labels = 0

    def add(self, example: Any) -> None:
        self._tokens.write(example.ids.astype(self.dtype).tobytes())
        self._mask.write(example.loss_mask.astype(np.uint8).tobytes())
        self.num_docs += 1
        self.num_tokens += len(example.ids)
        self.num_labels += int(example.loss_mask[1:].sum())
        self._offsets.append(self.num_tokens)

    def close(self) -> dict[str, Any]:
        self._tokens.close()
        self._mask.close()
        np.save(self.root / "offsets.npy", np.array(self._offsets, dtype=np.int64))
        return {
            "num_docs": self.num_docs,
            "num_tokens": self.num_tokens,
            "num_labels": self.num_labels,
            "files": {k: f"{self.root.name}/{k}" for k in ("tokens.bin", "loss_mask.bin", "offsets.npy")},
        }
