"""`data.sources`: each source prepared into its own cached shards, and the folder that ties them.

A source is prepared exactly like a one-corpus `data.path` (its own `DataConfig`, its own cache key
from its files, tokenizer and settings), so adding or editing one source prepares only that one.
The mixture folder (`<cache_dir>/<name>-mix-<hash of the source folders>/manifest.json`) lists the
sources' shard folders; it holds no tokens. Weights stay in the config: changing them reuses every
folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from llmtrain.config import DataConfig, SourceConfig
from llmtrain.data.cache import FORMAT_VERSION, MANIFEST, read_manifest
from llmtrain.data.errors import DataError
from llmtrain.data.mixture_sampler import MixtureSource, largest_remainder
from llmtrain.data.pretrain.prepare import ensure_shards
from llmtrain.data.pretrain.sources import resolve_files
from llmtrain.data.pretrain.windows import PretrainWindows
from llmtrain.data.shards import TokenShards

MIXTURE_KIND = "mixture"


def source_config(cfg: DataConfig, src: SourceConfig) -> DataConfig:
    """The one-corpus config that prepares and reads source `src` of `cfg`."""
    return dataclasses.replace(
        cfg,
        name=src.name,
        path=src.path,
        shards_dir=src.shards_dir,
        format=src.format,
        text_field=src.text_field,
        text_split=src.text_split,
        hf_split=src.hf_split,
        sources=[],
    )


def ensure_mixture(cfg: DataConfig) -> Path:
    """Every source's shards (prepared if missing) and the mixture folder listing them."""
    configs = [source_config(cfg, src) for src in cfg.sources]
    # Check every source's path before preparing any: a typo in the third must not cost the first two.
    for i, (src, one) in enumerate(zip(cfg.sources, configs)):
        if one.path is not None and not one.path.startswith("hf:") and one.format != "hf":
            try:
                resolve_files(one)
            except DataError as exc:
                raise DataError(f"data.sources[{i}] ({src.name}).path: {exc}") from exc
    folders = []
    for i, (src, one) in enumerate(zip(cfg.sources, configs)):
        try:
            folders.append(ensure_shards(one))
        except DataError as exc:
            raise DataError(f"data.sources[{i}] ({src.name}): {exc}") from exc
    manifests = [read_manifest(f) for f in folders]
    first = manifests[0]["tokenizer"]
    for i, (src, m) in enumerate(zip(cfg.sources, manifests)):
        if m["tokenizer"]["fingerprint"] != first["fingerprint"]:
            raise DataError(
                f"data.sources[{i}] ({src.name}).tokenizer: its shards ({folders[i]}) were made with "
                f"{m['tokenizer']['name']!r} but data.sources[0] ({cfg.sources[0].name}) with {first['name']!r}; "
                "every source must use one tokenizer: prepare them with the same data.tokenizer"
            )
    entries = [{"name": s.name, "folder": str(Path(f).resolve())} for s, f in zip(cfg.sources, folders)]
    key = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:12]
    out = Path(cfg.cache_dir) / f"{cfg.name}-mix-{key}"
    if (out / MANIFEST).is_file():
        return out
    splits = {
        split: {
            "num_docs": sum(m["splits"][split]["num_docs"] for m in manifests),
            "num_tokens": sum(m["splits"][split]["num_tokens"] for m in manifests),
            "shards": [],
        }
        for split in ("train", "val")
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": MIXTURE_KIND,
        "name": cfg.name,
        "tokenizer": first,
        "dtype": manifests[0]["dtype"],
        "splits": splits,
        "sources": entries,
        "empty_docs": {"count": sum(m["empty_docs"]["count"] for m in manifests), "examples": []},
        "prep_seconds": sum(m["prep_seconds"] for m in manifests),
    }
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".manifest.")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    return out


def source_folders(cfg: DataConfig, folder: Path) -> dict[str, Path]:
    """Source name -> shard folder, from a mixture folder, for the sources `cfg` names."""
    listed = {e["name"]: Path(e["folder"]) for e in read_manifest(folder).get("sources", [])}
    missing = [s.name for s in cfg.sources if s.name not in listed]
    if missing:
        raise DataError(
            f"{folder / MANIFEST} lists no source {', '.join(missing)}; it is not this mixture's folder"
        )
    return {s.name: listed[s.name] for s in cfg.sources}


class MixtureWindows(Dataset):
    """The windows of every source, one after another; each sample says its source (`source_id`)."""

    def __init__(self, parts: list[PretrainWindows]) -> None:
        self.parts = parts
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        sample = self.parts[k][i - int(self.offsets[k])]
        return {**sample, "source_id": torch.tensor(k, dtype=torch.int64)}


class WindowSubset(Dataset):
    """The first `n` windows of a dataset."""

    def __init__(self, windows: Dataset, n: int) -> None:
        self.windows, self.n = windows, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.windows[i]


def source_windows(cfg: DataConfig, folder: Path, split: str) -> dict[str, PretrainWindows]:
    """Each source's windows of one split."""
    return {
        name: PretrainWindows(TokenShards(f, split), cfg.seq_len, cfg.document_masking)
        for name, f in source_folders(cfg, folder).items()
    }


def mixture_train(cfg: DataConfig, folder: Path) -> tuple[MixtureWindows, list[MixtureSource]]:
    windows = source_windows(cfg, folder, "train")
    sources = [MixtureSource(s.name, s.weight, len(windows[s.name]), s.max_epochs) for s in cfg.sources]
    return MixtureWindows(list(windows.values())), sources


def mixture_val(cfg: DataConfig, folder: Path, budget: int) -> MixtureWindows:
    """The mixture's validation set: `budget` windows shared among the sources by weight (each
    source's first ones), fewer where a source has too few."""
    windows = source_windows(cfg, folder, "val")
    take = largest_remainder(np.array([s.weight for s in cfg.sources], dtype=np.float64), budget)
    parts = [WindowSubset(w, min(int(t), len(w))) for w, t in zip(windows.values(), take)]
    return MixtureWindows(parts)  # type: ignore[arg-type]
