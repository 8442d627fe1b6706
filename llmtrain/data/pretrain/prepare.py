"""Raw documents → tokenized shards + manifest, and the cache that reuses them.

Documents stream from `llmtrain.data.pretrain.sources`, are tokenized by the tokenizer's thread pool (order kept),
get an EOS appended (pretraining windows cut across documents; the EOS is how the model learns
where one ends, so no BOS is added), and go to `train/` or `val/` by a hash of their index. The
whole folder is built under a temporary name and published (`llmtrain.data.cache.publish`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
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
from llmtrain.data.pretrain.encode import tokenize_documents
from llmtrain.data.pretrain.sources import iter_documents, source_fingerprint
from llmtrain.data.tokenizer.load import load_tokenizer, tokenizer_identity

log = logging.getLogger("llmtrain")

_EXAMPLES_KEPT = 5


def prep_settings(cfg: DataConfig) -> dict[str, Any]:
    """The config keys that change what the shards contain."""
    return {
        "format": cfg.format,
        "text_field": cfg.text_field,
        "text_split": cfg.text_split,
        "hf_split": cfg.hf_split,
        "val_fraction": cfg.val_fraction,
        "shard_tokens": cfg.shard_tokens,
        "synthetic_docs": cfg.synthetic_docs if cfg.format == "synthetic" else None,
    }


def cache_key(cfg: DataConfig) -> str:
    """sha256 over source contents, tokenizer identity and prep settings.

    File paths are left out on purpose: moving or re-mounting the same data keeps its cache entry,
    while editing one byte of it or changing the tokenizer makes a new one.
    """
    sources = source_fingerprint(cfg)
    sources = {**sources, "files": [{k: f[k] for k in ("size", "sha256")} for f in sources.get("files", [])]}
    ident = tokenizer_identity(load_tokenizer(cfg.tokenizer))
    payload = {
        "format_version": FORMAT_VERSION,
        "sources": sources,
        "tokenizer": {"vocab_size": ident["vocab_size"], "fingerprint": ident["fingerprint"]},
        "settings": prep_settings(cfg),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def ensure_shards(cfg: DataConfig) -> Path:
    """The shard folder for `cfg`: `data.shards_dir` if set, else the cache entry, prepared if missing.

    Safe to race: preparation renames a finished folder into place atomically, and a loser of the
    race keeps the winner's (identical) folder. The trainer still calls this on rank 0 first.
    """
    if cfg.shards_dir is not None:
        shards_dir = Path(cfg.shards_dir)
        read_manifest(shards_dir)
        return shards_dir
    shards_dir = Path(cfg.cache_dir) / f"{cfg.name}-{cache_key(cfg)[:12]}"
    if (shards_dir / MANIFEST).is_file():
        return shards_dir
    log.info("preparing shards for data=%s into %s", cfg.name, shards_dir)
    return prepare_shards(cfg, shards_dir, workers=cfg.prep_workers, progress=sys.stderr.isatty())


def prepare_shards(cfg: DataConfig, out_dir: Path, workers: int | None = None, progress: bool = True) -> Path:
    """Tokenize the configured source into `out_dir` (which must not exist yet) and return it.

    `workers`: tokenizer processes; None means `data.prep_workers`, and if that is None too, all
    cores. With 1 (or fewer) everything runs in this process. The output does not depend on it.
    """
    tok = load_tokenizer(cfg.tokenizer)
    workers = prep_workers(cfg, workers)
    total = cfg.synthetic_docs if cfg.format == "synthetic" else None

    def documents(bar: Any) -> Iterator[tuple[int, str, np.ndarray]]:
        for index, doc, tokens in tokenize_documents(iter_documents(cfg), tok, workers):
            bar.update(1)
            yield index, doc.origin, tokens

    return write_shards(cfg, tok, out_dir, source_fingerprint(cfg), documents, total, progress)


def prep_workers(cfg: DataConfig, workers: int | None) -> int:
    if workers is not None:
        return workers
    return cfg.prep_workers if cfg.prep_workers is not None else (os.cpu_count() or 1)


def write_shards(
    cfg: DataConfig,
    tok: Any,
    out_dir: Path,
    sources: dict[str, Any],
    documents: Any,
    total: int | None = None,
    progress: bool = True,
) -> Path:
    """Route `documents(bar)` — (index, origin, token ids + EOS or empty) in source order — into the
    train/val shards of a new folder `out_dir`, with its manifest; the one writer of shard folders
    (`prepare_shards`, and the merge of a preparation done in parts)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DataError(f"{out_dir} already exists; delete it or choose another output folder")
    identity = tokenizer_identity(tok)
    dtype = shard_dtype(identity["vocab_size"])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        writers = {split: _ShardWriter(tmp, split, dtype, cfg.shard_tokens) for split in SPLITS}
        started = time.perf_counter()
        with tqdm(total=total, unit="doc", desc=f"prepare {cfg.name}", disable=not progress) as bar:
            empty = _write_documents(cfg, documents(bar), writers)
        seconds = time.perf_counter() - started
        if writers["train"].num_docs == 0:
            raise DataError(
                f"data={cfg.name}: no training documents ({writers['val'].num_docs} went to validation, "
                f"{empty['count']} were empty); add data or lower data.val_fraction"
            )
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "name": cfg.name,
            "tokenizer": identity,
            "dtype": dtype.name,
            "splits": {split: w.close() for split, w in writers.items()},
            "empty_docs": empty,
            "sources": sources,
            "settings": {**prep_settings(cfg), "path": cfg.path, "tokenizer": cfg.tokenizer},
            "prep_seconds": round(seconds, 3),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        if cfg.val_fraction > 0 and writers["val"].num_docs == 0:
            train = writers["train"]
            log.warning(
                "data=%s: the validation split is empty: all %d documents (%d tokens) went to train "
                "(data.val_fraction=%g), so there is no validation loss. The split is by document, and "
                "with data.text_split=paragraph a text file with no blank lines is one document: use "
                "data.text_split=line, or more documents",
                cfg.name,
                train.num_docs,
                train.num_tokens,
                cfg.val_fraction,
            )
        if empty["count"]:
            log.warning(
                "data=%s: skipped %d documents with no tokens (e.g. %s); counted in %s",
                cfg.name,
                empty["count"],
                ", ".join(empty["examples"]),
                out_dir / MANIFEST,
            )
        return publish(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_documents(
    cfg: DataConfig, documents: Iterator[tuple[int, str, np.ndarray]], writers: dict[str, _ShardWriter]
) -> dict[str, Any]:
    """Route every tokenized document to its split; returns the empty-document count and examples."""
    empty_count, examples = 0, []
    # The newest train document is held back: if validation would end up empty, it moves there,
    # which guarantees a validation document whenever val_fraction > 0 and there are two documents.
    pending: np.ndarray | None = None
    for index, origin, tokens in documents:
        val = is_val_document(index, cfg.val_fraction)
        if len(tokens) == 0:
            empty_count += 1
            writers["val" if val else "train"].num_empty += 1
            if len(examples) < _EXAMPLES_KEPT:
                examples.append(origin)
            continue
        if val:
            writers["val"].add(tokens)
        else:
            if pending is not None:
                writers["train"].add(pending)
            pending = tokens
    if pending is not None:
        if cfg.val_fraction > 0 and writers["val"].num_docs == 0 and writers["train"].num_docs > 0:
            writers["val"].add(pending)
        else:
            writers["train"].add(pending)
    return {"count": empty_count, "examples": examples}


class _ShardWriter:
    """Appends documents to `split/shard_NNNNN.bin`, starting a new file once `shard_tokens` is reached.

    A document is never cut between files (a shard may exceed `shard_tokens` by one document), so
    each shard's index is self-contained.
    """

    def __init__(self, root: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.root, self.split, self.dtype, self.shard_tokens = root, split, dtype, shard_tokens
        (root / split).mkdir(parents=True)
        self.shards: list[dict[str, Any]] = []
        self.num_docs = self.num_tokens = self.num_empty = 0
        self._file = None
        self._name = ""  # "split/shard_NNNNN" of the open shard
        self._ends: list[int] = []
        self._shard_len = 0

    def add(self, tokens: np.ndarray) -> None:
        if self._file is None:
            self._name = f"{self.split}/shard_{len(self.shards):05d}"
            self._file = (self.root / f"{self._name}.bin").open("wb")
        self._file.write(tokens.astype(self.dtype, copy=False).tobytes())
        self._shard_len += len(tokens)
        self._ends.append(self._shard_len)
        self.num_docs += 1
        self.num_tokens += len(tokens)
        if self._shard_len >= self.shard_tokens:
            self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        np.save(self.root / f"{self._name}.idx.npy", np.array(self._ends, dtype=np.int64))
        self.shards.append(
            {
                "file": f"{self._name}.bin",
                "index": f"{self._name}.idx.npy",
                "num_tokens": self._shard_len,
                "num_docs": len(self._ends),
            }
        )
        self._ends, self._shard_len = [], 0

    def close(self) -> dict[str, Any]:
        if self._file is not None:
            self._finish_shard()
        return {
            "num_docs": self.num_docs,
            "num_tokens": self.num_tokens,
            "empty_docs": self.num_empty,
            "shards": self.shards,
        }


def describe_shards(shards_dir: Path) -> str:
    """What a shard folder holds, from its manifest: counts per split, empty documents, speed."""
    manifest = read_manifest(shards_dir)
    splits = manifest["splits"]
    tokens = sum(s["num_tokens"] for s in splits.values())
    lines = [f"shards: {shards_dir}"]
    for name, split in splits.items():
        lines.append(
            f"  {name}: {split['num_docs']:,} docs, {split['num_tokens']:,} tokens, {len(split['shards'])} shards"
        )
    lines.append(f"  empty documents skipped: {manifest['empty_docs']['count']:,}")
    lines.append(f"  prepared at {tokens / max(manifest['prep_seconds'], 1e-9):,.0f} tokens/s")
    return "\n".join(lines)
