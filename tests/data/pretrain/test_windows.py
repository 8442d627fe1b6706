from __future__ import annotations

import numpy as np
import pytest
import torch

from llmtrain.data.collate import IGNORE_INDEX
from llmtrain.data.pretrain.windows import PretrainWindows
from llmtrain.data.shards import TokenShards

EOS = 258


@pytest.fixture
def shards(make_shards):
    texts = [("x" * (3 + (7 * i) % 23)) for i in range(60)]
    return TokenShards(make_shards(texts, val_fraction=0.0, shard_tokens=100), "train")


def test_length_is_whole_windows_with_one_token_to_spare(shards):
    for t in (1, 7, 16, shards.num_tokens - 1):
        assert len(PretrainWindows(shards, t, False)) == (shards.num_tokens - 1) // t
    assert len(PretrainWindows(shards, shards.num_tokens, False)) == 0


def test_windows_tile_the_stream_every_token_but_the_first_is_a_label_once(shards):
    t = 16
    windows = PretrainWindows(shards, t, document_masking=False)
    stream = shards.read(0, shards.num_tokens).astype(np.int64)
    inputs = torch.cat([windows[i]["input_ids"] for i in range(len(windows))])
    labels = torch.cat([windows[i]["labels"] for i in range(len(windows))])
    assert inputs.tolist() == stream[: len(windows) * t].tolist()
    assert labels.tolist() == stream[1 : len(windows) * t + 1].tolist()
    sample = windows[3]
    assert sample["input_ids"].dtype == torch.int64 and sample["input_ids"].shape == (t,)
    assert sample["sample_index"].item() == 3


def test_without_document_masking_positions_run_on_and_one_segment(shards):
    sample = PretrainWindows(shards, 32, document_masking=False)[2]
    assert sample["position_ids"].tolist() == list(range(32))
    assert sample["document_ids"].tolist() == [0] * 32
    assert (sample["labels"] != IGNORE_INDEX).all()


def test_document_masking_restarts_positions_and_masks_labels_across_boundaries(shards):
    t = 40
    windows = PretrainWindows(shards, t, document_masking=True)
    stream = shards.read(0, shards.num_tokens).astype(np.int64)
    checked_boundaries = 0
    for i in range(len(windows)):
        s = windows[i]
        inputs, labels = s["input_ids"].tolist(), s["labels"].tolist()
        # Reference, token by token: a new segment starts after every EOS.
        doc, pos = 0, 0
        for j in range(t):
            assert s["document_ids"][j] == doc and s["position_ids"][j] == pos, (i, j)
            if inputs[j] == EOS:
                assert labels[j] == IGNORE_INDEX  # a document does not predict the next one
                doc, pos = doc + 1, 0
                checked_boundaries += 1
            else:
                assert labels[j] == stream[i * t + j + 1]
                pos += 1
    assert checked_boundaries > 20


def test_window_ending_exactly_at_a_document_end_masks_its_last_label(make_shards):
    shards = TokenShards(make_shards(["abc", "defgh"], val_fraction=0.0), "train")  # doc ends at 4 and 10
    s = PretrainWindows(shards, 4, document_masking=True)[0]
    assert s["input_ids"].tolist() == [97, 98, 99, EOS]
    assert s["labels"].tolist() == [98, 99, EOS, IGNORE_INDEX]
    s = PretrainWindows(shards, 4, document_masking=True)[1]
    assert s["position_ids"].tolist() == [0, 1, 2, 3] and s["document_ids"].tolist() == [0, 0, 0, 0]
