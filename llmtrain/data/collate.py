"""Stack samples into a batch, padding to the longest when lengths differ."""

from __future__ import annotations

import torch

# The label of a position without loss (PyTorch cross_entropy's default ignore_index). Defined here,
# not imported from llmtrain.model: data does not depend on the model package.
IGNORE_INDEX = -100

# What a padded position holds per field besides input_ids: no loss, position 0, no document
# (document id -1 is how the loop counts real tokens and how attention masks exclude padding).
_PAD_VALUES = {"labels": IGNORE_INDEX, "position_ids": 0, "document_ids": -1}


def collate(samples: list[dict[str, torch.Tensor]], pad_id: int | None = None) -> dict[str, torch.Tensor]:
    """One batch: scalars become [B], sequences [B, T] (right-padded to the longest with `pad_id`)."""
    batch: dict[str, torch.Tensor] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if values[0].dim() == 0:
            batch[key] = torch.stack(values)
            continue
        longest = max(v.shape[0] for v in values)
        if all(v.shape[0] == longest for v in values):
            batch[key] = torch.stack(values)
            continue
        if pad_id is None:
            raise ValueError(
                f"samples of different lengths ({sorted({v.shape[0] for v in values})}) for {key!r} "
                "need a pad_id to be batched"
            )
        fill = pad_id if key == "input_ids" else _PAD_VALUES.get(key, 0)
        out = torch.full((len(values), longest), fill, dtype=values[0].dtype)
        for row, v in enumerate(values):
            out[row, : v.shape[0]] = v
        batch[key] = out
    return batch
