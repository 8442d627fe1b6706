"""Prepared SFT examples as training rows: one example per row, or several packed into one.

A row is what the sampler draws and the collate pads: per token `input_ids`, `labels` (-100 where
not trained), `position_ids` (restarting at 0 for every example) and `document_ids` (the example's
slot in the row). Inputs and labels are shifted *per example*, so the last token of one example is
never trained to predict the first of the next. With `data.document_masking` (required for packing)
the loss module turns `document_ids` into a block-diagonal causal mask, so packed examples neither
attend to nor influence each other: each is computed exactly as if it were alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from llmtrain.config import DataConfig
from llmtrain.data.cache import MANIFEST, read_manifest
from llmtrain.data.collate import IGNORE_INDEX, collate
from llmtrain.data.errors import DataError
from llmtrain.data.sft.packing import one_per_row, pack_examples, packing_efficiency

log = logging.getLogger("llmtrain")

# The packing plan's seed is fixed: which examples share a row is a property of the data, while
# the order rows are trained in follows trainer.seed through the sampler.
PACKING_SEED = 0


class SFTExamples:
    """One split of a prepared SFT folder: example `i` is (token ids, loss mask), read via memory maps.

    Picklable: the maps are reopened lazily in each DataLoader worker.
    """

    def __init__(self, folder: Path, split: str) -> None:
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest.get("kind") != "sft":
            raise DataError(
                f"{self.folder} holds pretraining shards, not SFT examples; set data.kind to match"
            )
        self.dtype = np.dtype(manifest["dtype"])
        self.split = split
        self.offsets = np.load(self.folder / split / "offsets.npy")
        self._tokens: np.ndarray | None = None
        self._mask: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": None, "_mask": None}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per example."""
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._tokens is None or self._mask is None:
            split_dir = self.folder / self.split
            self._tokens = np.memmap(split_dir / "tokens.bin", dtype=self.dtype, mode="r")
            self._mask = np.memmap(split_dir / "loss_mask.bin", dtype=np.uint8, mode="r")
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self._tokens[a:b].astype(np.int64), np.array(self._mask[a:b])


def example_tensors(ids: np.ndarray, mask: np.ndarray, slot: int) -> dict[str, torch.Tensor]:
    """One example's inputs and shifted labels: token t+1 is a label where the mask says so."""
    labels = np.where(mask[1:] == 1, ids[1:], IGNORE_INDEX)
    n = len(ids) - 1
    return {
        "input_ids": torch.from_numpy(ids[:-1].copy()),
        "labels": torch.from_numpy(labels),
        "position_ids": torch.arange(n, dtype=torch.int64),
        "document_ids": torch.full((n,), slot, dtype=torch.int64),
    }


class SFTRows(Dataset):
    """Rows of examples (a packing plan); item `r` is row r's tensors, concatenated."""

    def __init__(self, examples: SFTExamples, rows: list[np.ndarray]) -> None:
        self.examples = examples
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, r: int) -> dict[str, torch.Tensor]:
        parts = [example_tensors(*self.examples[int(i)], slot) for slot, i in enumerate(self.rows[r])]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def sft_rows(cfg: DataConfig, folder: Path, split: str) -> tuple[SFTRows, Any]:
    """(dataset of rows, collate function) for one split, packed when `data.sft.packing`."""
    examples = SFTExamples(folder, split)
    inputs = examples.lengths - 1  # tokens each example occupies in a row
    rows = pack_examples(inputs, cfg.seq_len, PACKING_SEED) if cfg.sft.packing else one_per_row(len(examples))
    if split == "train":
        log.info(
            "sft rows: %d examples in %d rows of up to %d tokens (packing=%s), %.1f%% of row slots hold tokens",
            len(examples),
            len(rows),
            cfg.seq_len,
            cfg.sft.packing,
            100 * packing_efficiency(rows, inputs, cfg.seq_len),
        )
    pad_id = json.loads((Path(folder) / MANIFEST).read_text())["tokenizer"]["pad_id"]
    return SFTRows(examples, rows), partial(collate, pad_id=pad_id)


class UnshiftedExamples(Dataset):
    """Our prepared SFT examples as HF expects them: unshifted labels, -100 off the assistant turns."""

    def __init__(self, examples: SFTExamples) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids, mask = self.examples[i]
        labels = [int(t) if m else IGNORE_INDEX for t, m in zip(ids, mask)]
        return {"input_ids": ids.tolist(), "labels": labels}


@dataclass
class Reply:
    """A validation example cut at its last reply: the prompt the model answers (the conversation
    before that reply, as `ChatTemplate.encode_prompt` makes it) and the reply's ids (its end token
    included), for generated-answer and choice scoring."""

    index: int
    prompt_ids: list[int]
    reply_ids: list[int]


def last_replies(folder: Path, split: str, limit: int | None = None) -> list[Reply]:
    """The first `limit` examples of `split` (all when None) cut at their last trained span.

    The loss mask marks the reply tokens (data.sft.train_on_prompt=false, checked by the config),
    so the last run of ones is the last assistant reply and everything before it its prompt.
    """
    examples = SFTExamples(folder, split)
    out = []
    for i in range(len(examples) if limit is None else min(limit, len(examples))):
        ids, mask = examples[i]
        trained = np.flatnonzero(mask)
        end = int(trained[-1]) + 1
        gaps = np.flatnonzero(mask[:end] == 0)
        start = int(gaps[-1]) + 1 if len(gaps) else 0
        if start == 0:
            raise DataError(
                f"{folder}/{split} example {i}: every token is trained, so no prompt can be told from "
                "its reply; generated-answer and choice scoring need data.sft.train_on_prompt=false"
            )
        out.append(Reply(i, ids[:start].tolist(), ids[start:end].tolist()))
    return out
