"""Prepared classification examples as training rows: token ids and one class id per row.

A row is `input_ids` [T], `labels` (a scalar class id) and `document_ids` (0 on every token, so
collate pads with -1 and the throughput meter counts real tokens). Batches are right-padded with
the tokenizer's pad id: the model pools the last non-pad token, and causal attention keeps the
padding after it from changing anything before it.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from llmtrain.data.cache import read_manifest
from llmtrain.data.collate import collate
from llmtrain.data.errors import DataError


class ClassifyExamples(Dataset):
    """One split of a prepared classification folder. Picklable: the token map opens lazily."""

    def __init__(self, folder: Path, split: str) -> None:
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest.get("kind") != "classify":
            raise DataError(
                f"{self.folder} holds {manifest.get('kind', 'pretrain')} data, not classification "
                "examples; set data.kind to match"
            )
        self.split = split
        self.dtype = np.dtype(manifest["dtype"])
        self.label_names: list[str] = manifest["labels"]
        self.pad_id: int = manifest["tokenizer"]["pad_id"]
        self.offsets = np.load(self.folder / split / "offsets.npy")
        self.labels = np.load(self.folder / split / "labels.npy")
        self._tokens: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": None}

    def __len__(self) -> int:
        return len(self.labels)

    def ids(self, i: int) -> np.ndarray:
        if self._tokens is None:
            path = self.folder / self.split / "tokens.bin"
            self._tokens = np.memmap(path, dtype=self.dtype, mode="r") if path.stat().st_size else np.empty(0)
        return self._tokens[int(self.offsets[i]) : int(self.offsets[i + 1])].astype(np.int64)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(self.ids(i))
        return {
            "input_ids": ids,
            "labels": torch.tensor(int(self.labels[i])),
            "document_ids": torch.zeros_like(ids),
        }

    def rows(self) -> list[dict[str, Any]]:
        """The source rows (text, text_pair, label, where), in example order."""
        lines = (self.folder / self.split / "rows.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]


def classify_rows(folder: Path, split: str) -> tuple[ClassifyExamples, Any]:
    examples = ClassifyExamples(folder, split)
    return examples, partial(collate, pad_id=examples.pad_id)


class HFClassifyExamples(Dataset):
    """The same examples in `transformers.Trainer`'s convention (lists; its collator pads)."""

    def __init__(self, examples: ClassifyExamples) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.examples.ids(i).tolist(), "labels": int(self.examples.labels[i])}
