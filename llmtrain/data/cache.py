"""What both pipelines' prepared folders share: the manifest, the train/val split, the token dtype,
and the atomic rename that publishes a finished folder.

A prepared folder (pretraining shards or SFT examples) is `manifest.json` plus one subfolder per
split. It is built under a temporary name and renamed into place at the end, so a crash never
leaves something that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from llmtrain.data.errors import DataError
from llmtrain.data.tokenizer.load import tokenizer_identity

SPLITS = ("train", "val")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def read_manifest(shards_dir: Path) -> dict[str, Any]:
    """The manifest of a shard folder, or `DataError` saying how to make one."""
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{shards_dir} has no {MANIFEST}: not a shard folder, or an interrupted preparation. "
            "Run `python launch/prepare_data.py data=...` (or unset data.shards_dir to use the cache)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); re-run launch/prepare_data.py") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path} has shard format version {manifest.get('format_version')}, this code reads "
            f"version {FORMAT_VERSION}; re-run launch/prepare_data.py"
        )
    return manifest


def check_manifest(shards_dir: Path, tok: Any) -> dict[str, Any]:
    """The manifest, after checking the shards were made with this tokenizer.

    Ids from another vocabulary are valid integers, so training on them would run and learn noise;
    this is the one place that catches it.
    """
    manifest = read_manifest(shards_dir)
    made, now = manifest["tokenizer"], tokenizer_identity(tok)
    if made["fingerprint"] != now["fingerprint"] or made["vocab_size"] != now["vocab_size"]:
        raise DataError(
            f"shards in {shards_dir} were made with tokenizer {made['name']!r} (vocab {made['vocab_size']}, "
            f"fingerprint {made['fingerprint'][:12]}) but the model uses {now['name']!r} (vocab "
            f"{now['vocab_size']}, fingerprint {now['fingerprint'][:12]}); re-run launch/prepare_data.py "
            "with this data.tokenizer or point data.shards_dir at matching shards"
        )
    return manifest


def shard_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id (0 .. vocab_size - 1) fits in it, else uint32: half the disk and page cache."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def is_val_document(index: int, val_fraction: float) -> bool:
    """Whether document `index` is held out. A hash, not a stride, so no periodic structure in the
    corpus (e.g. one file every N documents) ends up wholly in one split."""
    if val_fraction <= 0:
        return False
    h = hashlib.blake2b(index.to_bytes(8, "little"), digest_size=8).digest()
    return int.from_bytes(h, "little") < val_fraction * 2**64


def publish(tmp: Path, out_dir: Path) -> Path:
    """Rename a finished temp folder into place: a prepared folder is complete or absent."""
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if (out_dir / MANIFEST).is_file():  # another process finished the same folder first
            return out_dir
        raise
    return out_dir
