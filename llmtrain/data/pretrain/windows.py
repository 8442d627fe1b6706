"""Fixed-length pretraining samples cut from the token stream of one split.

Window `i` covers tokens `[i*T, i*T + T + 1)`: inputs are its first T tokens, labels its last T.
Consecutive windows share one token, so every token of the stream except the first is a label
exactly once, and no token is wasted on padding. Windows cut across documents; what a model may
see across a boundary is decided by `document_masking`:

- False: the stream is one long text. Positions run 0..T-1, every token is in segment 0, and the
  EOS of a document is trained to predict the first token of the next (nanoGPT, GPT-2 style).
- True: each document is its own sequence inside the window. Positions restart at 0 where a
  document starts, `document_ids` number the segments (0, 0, 0, 1, 1, 2, ...) for a block-diagonal
  attention mask, and the label of each document's last token (its EOS, whose "next token" belongs
  to an unrelated document) is -100, so nothing is learned across the boundary.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from llmtrain.data.collate import IGNORE_INDEX
from llmtrain.data.shards import TokenShards


class PretrainWindows(Dataset):
    def __init__(self, shards: TokenShards, seq_len: int, document_masking: bool) -> None:
        self.shards = shards
        self.seq_len = seq_len
        self.document_masking = document_masking

    def __len__(self) -> int:
        return max(self.shards.num_tokens - 1, 0) // self.seq_len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range: {len(self)} windows of {self.seq_len} tokens")
        t = self.seq_len
        start = i * t
        window = torch.from_numpy(self.shards.read(start, start + t + 1).astype(np.int64))
        input_ids, labels = window[:-1], window[1:].clone()
        if not self.document_masking:
            position_ids = torch.arange(t, dtype=torch.int64)
            document_ids = torch.zeros(t, dtype=torch.int64)
        else:
            # Ends e in (start, start + t]: token e - 1 (inside the window) is a document's EOS.
            ends = self.shards.doc_boundaries_in(start, start + t) - start
            last_of_doc = torch.from_numpy(ends - 1)
            labels[last_of_doc] = IGNORE_INDEX
            is_start = torch.zeros(t, dtype=torch.int64)
            is_start[torch.from_numpy(ends[ends < t])] = 1
            document_ids = torch.cumsum(is_start, 0)
            segment_starts = torch.cat([torch.zeros(1, dtype=torch.int64), torch.from_numpy(ends[ends < t])])
            position_ids = torch.arange(t, dtype=torch.int64) - segment_starts[document_ids]
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "document_ids": document_ids,
            "sample_index": torch.tensor(i, dtype=torch.int64),
        }


class UnshiftedWindows(Dataset):
    """Trainer passes every field to the model; HF shifts `labels` itself, so labels = inputs."""

    def __init__(self, windows: PretrainWindows) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.windows[i]["input_ids"]
        return {"input_ids": ids, "labels": ids}
