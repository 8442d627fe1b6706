"""Read one split of a shard folder as a single token stream, through memory maps.

Layout (written by `llmtrain.data.pretrain.prepare`):

    manifest.json
    train/shard_00000.bin       flat token ids (uint16 or uint32, see the manifest's dtype)
    train/shard_00000.idx.npy   int64 end offset of every document inside that shard
    val/...

Documents never straddle shard files, but windows do: `read` serves any range of the virtual
concatenation. Nothing is read until asked for, so every rank and DataLoader worker can open the
whole corpus for the price of a few file handles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llmtrain.data.cache import MANIFEST, read_manifest
from llmtrain.data.errors import DataError


class TokenShards:
    """One split (`train` or `val`) of a shard folder as a virtual array of `num_tokens` ids.

    Picklable: memory maps are opened lazily in whichever process first reads, and dropped when
    pickled, so a DataLoader worker reopens the files instead of receiving their contents.
    """

    def __init__(self, shards_dir: Path, split: str) -> None:
        self.shards_dir = Path(shards_dir)
        self.split = split
        manifest = read_manifest(self.shards_dir)
        if split not in manifest["splits"]:
            raise DataError(f"{self.shards_dir}: no split {split!r} (has {', '.join(manifest['splits'])})")
        info = manifest["splits"][split]
        self.dtype = np.dtype(manifest["dtype"])
        self._files = [self.shards_dir / s["file"] for s in info["shards"]]
        self._index_files = [self.shards_dir / s["index"] for s in info["shards"]]
        counts = np.array([s["num_tokens"] for s in info["shards"]], dtype=np.int64)
        # starts[k] is the global offset of shard k's first token; starts[-1] is the total.
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.num_tokens = int(self._starts[-1])
        self.num_docs = int(info["num_docs"])
        for f, count in zip(self._files, counts):
            if not f.is_file():
                raise DataError(f"shard file {f} listed in {self.shards_dir / MANIFEST} is missing")
            expected = int(count) * self.dtype.itemsize
            if f.stat().st_size != expected:
                raise DataError(
                    f"shard file {f} has {f.stat().st_size:,} bytes but {self.shards_dir / MANIFEST} says "
                    f"{int(count):,} {self.dtype.name} tokens ({expected:,} bytes): it was truncated or "
                    "overwritten; delete the folder and prepare it again (launch/prepare_data.py)"
                )
        self._maps: list[np.ndarray] | None = None
        self._ends: list[np.ndarray] | None = None
        self._doc_ends: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = state["_ends"] = state["_doc_ends"] = None
        return state

    def _open(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if self._maps is None or self._ends is None:
            self._maps = [np.memmap(f, dtype=self.dtype, mode="r") for f in self._files]
            self._ends = [np.load(f, mmap_mode="r") for f in self._index_files]
        return self._maps, self._ends

    def read(self, start: int, end: int) -> np.ndarray:
        """Tokens `[start, end)` of the split's stream (a copy, in the shard dtype)."""
        if not 0 <= start <= end <= self.num_tokens:
            raise IndexError(f"range [{start}, {end}) outside the {self.num_tokens} tokens of {self.split}")
        maps, _ = self._open()
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        parts = []
        pos, k = start, first
        while pos < end:
            local = pos - int(self._starts[k])
            take = min(end, int(self._starts[k + 1])) - pos
            parts.append(maps[k][local : local + take])
            pos += take
            k += 1
        if not parts:
            return np.empty(0, dtype=self.dtype)
        return np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])

    def doc_boundaries_in(self, start: int, end: int) -> np.ndarray:
        """Global end offsets `e` of documents with `start < e <= end` (int64, ascending).

        A document ending at `e` means token `e - 1` is its last (the EOS) and token `e` starts the
        next one.
        """
        _, ends = self._open()
        out = []
        first = max(int(np.searchsorted(self._starts, start, side="right")) - 1, 0)
        for k in range(first, len(ends)):
            base = int(self._starts[k])
            if base >= end:
                break
            local = ends[k]
            lo = np.searchsorted(local, start - base, side="right")
            hi = np.searchsorted(local, end - base, side="right")
            out.append(np.asarray(local[lo:hi], dtype=np.int64) + base)
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    @property
    def doc_ends(self) -> np.ndarray:
        """Every document's global end offset (materialised once: 8 bytes per document)."""
        if self._doc_ends is None:
            self._doc_ends = self.doc_boundaries_in(0, self.num_tokens)
        return self._doc_ends
