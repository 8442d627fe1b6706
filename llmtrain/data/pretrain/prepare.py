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
import re
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
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
from llmtrain.data.pretrain.sources import Document, iter_documents, source_fingerprint
from llmtrain.data.tokenizer.load import load_tokenizer, tokenizer_identity

log = logging.getLogger("llmtrain")

# A chunk is the unit of work sent to a tokenizer process: big enough to amortise the pickling.
_CHUNK_DOCS = 512
_CHUNK_CHARS = 4_000_000
_EXAMPLES_KEPT = 5
# A text longer than this is tokenized in windows (`_encode_long`): a tokenizer call holds about
# 200 bytes per character (a 34 MB one-line document peaked at 7 GB), so memory must follow the
# window, not the document.
_PIECE_CHARS = 1 << 18
_PIECE_MARGIN = 512
_WHITESPACE = re.compile(r"\s")


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


def _chunks(docs: Iterator[Document]) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    chars = 0
    for doc in docs:
        chunk.append(doc)
        chars += len(doc.text)
        if len(chunk) >= _CHUNK_DOCS or chars >= _CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def tokenize_documents(
    docs: Iterator[Document], tok: Any, workers: int
) -> Iterator[tuple[int, Document, np.ndarray]]:
    """(document index, document, token ids + EOS or empty) for every document, in order.

    The tokenizer's own Rust thread pool does the work (`workers` threads; 1: this thread alone),
    one chunk at a time in a background thread, while this thread reads the next chunk and the
    caller writes the previous one: encoding releases the GIL, so reading and writing overlap it.
    This is the tokenizer's batch encoding with nothing added in between (`launch/bench.py --prep`
    measures it against that call alone). Worker processes, as before, paid for pickling every
    chunk out and every token array back, and for transformers' per-call Python layer.
    """
    index = 0
    with _parallelism(workers), ThreadPoolExecutor(1, thread_name_prefix="tokenize") as pool:
        encode = partial(_encode_texts, tok, parallel=workers > 1)
        # Two chunks in flight: one encoding, one read and waiting; memory follows the chunk size.
        in_flight: deque = deque()
        for chunk in _chunks(docs):
            in_flight.append((chunk, pool.submit(encode, [d.text for d in chunk])))
            if len(in_flight) < 2:
                continue
            done, result = in_flight.popleft()
            for doc, tokens in zip(done, result.result()):
                yield index, doc, tokens
                index += 1
        while in_flight:
            done, result = in_flight.popleft()
            for doc, tokens in zip(done, result.result()):
                yield index, doc, tokens
                index += 1


@contextmanager
def _parallelism(workers: int) -> Iterator[None]:
    """The tokenizer's thread pool on (and `workers` wide) while preparing.

    Launchers set TOKENIZERS_PARALLELISM=false so training ranks do not fight over cores; preparing
    data is the one time the cores are the tokenizer's (the other ranks wait). Rayon sizes its
    pool once per process, at first use, from RAYON_NUM_THREADS: a later call with another worker
    count keeps the first pool's size.
    """
    saved = {k: os.environ.get(k) for k in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")}
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if workers > 1 else "false"
    os.environ.setdefault("RAYON_NUM_THREADS", str(max(workers, 1)))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _encode_texts(tok: Any, texts: list[str], parallel: bool = False) -> list[np.ndarray]:
    # The Rust tokenizer directly: transformers' __call__ adds a Python layer per call (BatchEncoding,
    # lists of lists) that costs about a fifth of the time. encode_special_tokens is what
    # split_special_tokens=True sets: a document containing the text "</s>" gets no real EOS id there.
    short = [t if len(t) <= _PIECE_CHARS else "" for t in texts]
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:  # a Python (slow) tokenizer: no Rust layer to call
        ids = tok(short, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        encodings = [SimpleNamespace(ids=x) for x in ids]
    elif parallel:
        backend.encode_special_tokens = True
        encodings = backend.encode_batch_fast(short, add_special_tokens=False)
    else:
        backend.encode_special_tokens = True
        encodings = [backend.encode(t, add_special_tokens=False) for t in short]
    eos = np.array([tok.eos_token_id], dtype=np.uint32)
    out = []
    for text, enc in zip(texts, encodings):
        ids = _encode_long(tok, text) if len(text) > _PIECE_CHARS else np.array(enc.ids, dtype=np.uint32)
        out.append(np.concatenate([ids, eos]) if len(ids) else np.empty(0, dtype=np.uint32))
    return out


def _encode_long(tok: Any, text: str) -> np.ndarray:
    """The ids of `text` (no EOS), tokenized in windows of about `_PIECE_CHARS` characters.

    Boundary rule: the text is cut at the first whitespace after every `_PIECE_CHARS` characters
    (anywhere, if there is none within another `_PIECE_CHARS`). Each piece is tokenized with
    `_PIECE_MARGIN` characters of context on each side and keeps the tokens whose first character
    lies in it. A token depends only on nearby text (merges do not reach across hundreds of
    characters; a dummy-prefix "▁" lands in the margin), so the stream equals the whole text's.
    Each seam is checked: the kept tokens of neighbouring pieces must meet exactly, else the piece is
    tokenized again with a margin four times wider.
    """
    parts: list[np.ndarray] = []
    prev_end = 0
    for a, b in _pieces(text):
        margin = _PIECE_MARGIN
        while True:
            lo, hi = max(0, a - margin), min(len(text), b + margin)
            enc = tok(
                text[lo:hi], add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
            )
            kept = [
                (t, lo + s, lo + e)
                for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"])
                if a <= lo + s < b
            ]
            if not kept or kept[0][1] == prev_end or margin >= len(text):
                break
            margin *= 4
        if kept:
            prev_end = kept[-1][2]
        parts.append(np.array([t for t, _, _ in kept], dtype=np.uint32))
        del enc, kept
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint32)


def _pieces(text: str) -> Iterator[tuple[int, int]]:
    a = 0
    while a < len(text):
        b = a + _PIECE_CHARS
        if b < len(text):
            m = _WHITESPACE.search(text, b, b + _PIECE_CHARS)
            b = m.start() if m else b
        b = min(b, len(text))
        yield a, b
        a = b


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
