"""Documents to token ids + EOS, in order, by the tokenizer's own Rust thread pool.

What `prepare_shards` and the parts of a SLURM-array preparation (`parts.py`) tokenize with.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from types import SimpleNamespace
from typing import Any

import numpy as np

from llmtrain.data.pretrain.sources import Document

# A chunk is the unit of work sent to a tokenizer process: big enough to amortise the pickling.
_CHUNK_DOCS = 512
_CHUNK_CHARS = 4_000_000
# A text longer than this is tokenized in windows (`_encode_long`): a tokenizer call holds about
# 200 bytes per character (a 34 MB one-line document peaked at 7 GB), so memory must follow the
# window, not the document.
_PIECE_CHARS = 1 << 18
_PIECE_MARGIN = 512
_WHITESPACE = re.compile(r"\s")


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
