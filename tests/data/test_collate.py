from __future__ import annotations

import pytest
import torch

from llmtrain.data.collate import collate


def sample(n: int, index: int) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.arange(1, n + 1),
        "labels": torch.arange(2, n + 2),
        "position_ids": torch.arange(n),
        "document_ids": torch.zeros(n, dtype=torch.int64),
        "sample_index": torch.tensor(index),
    }


def test_equal_length_samples_stack_into_batch_tensors():
    batch = collate([sample(4, 0), sample(4, 1)])
    assert batch["input_ids"].shape == (2, 4)
    assert batch["sample_index"].tolist() == [0, 1]


def test_unequal_lengths_pad_to_the_longest_with_no_loss_and_no_document():
    batch = collate([sample(2, 0), sample(4, 1)], pad_id=9)
    assert batch["input_ids"][0].tolist() == [1, 2, 9, 9]
    assert batch["labels"][0].tolist() == [2, 3, -100, -100]
    assert batch["position_ids"][0].tolist() == [0, 1, 0, 0]
    assert batch["document_ids"][0].tolist() == [0, 0, -1, -1]
    assert batch["input_ids"][1].tolist() == [1, 2, 3, 4]


def test_unequal_lengths_without_pad_id_are_an_error():
    with pytest.raises(ValueError, match="need a pad_id"):
        collate([sample(2, 0), sample(3, 1)])
