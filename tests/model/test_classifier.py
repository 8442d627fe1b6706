"""The classifier pools the last real token of right-padded rows, its loss is the summed
(weighted) example cross-entropy, and LoRA keeps the head trainable."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmtrain.config import LoraConfig, ModelConfig
from llmtrain.model.build import build_model
from llmtrain.model.classifier import SequenceClassificationLoss

PAD = 0
NAMES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)
    return build_model(cfg, 100, torch.device("cpu"), NAMES, PAD).eval()


def test_config_records_labels_and_pad_id(model):
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"} and model.config.label2id["c"] == 2
    assert model.config.pad_token_id == PAD and model.config.num_labels == 3
    assert model.config.architectures == ["LlamaForSequenceClassification"]


def test_right_padding_does_not_change_a_rows_logits(model):
    short, long = torch.tensor([5, 6, 7, 2]), torch.tensor([5, 9, 9, 9, 9, 8, 2])
    batch = torch.full((2, 7), PAD)
    batch[0, :4], batch[1] = short, long
    with torch.no_grad():
        padded = model(input_ids=batch).logits
        alone = model(input_ids=short[None]).logits[0]
        # Negative control: pooling the last position (a pad) instead gives other logits.
        last = model.score(model.model(input_ids=batch).last_hidden_state)[0, -1]
    torch.testing.assert_close(padded[0], alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(last, alone, atol=1e-4)


def test_loss_is_the_summed_weighted_example_cross_entropy(model):
    ids = torch.randint(3, 100, (6, 10))
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        plain = SequenceClassificationLoss(model)(ids, labels)
        weights = [0.5, 1.0, 2.0]
        weighted = SequenceClassificationLoss(model, weights)(ids, labels)
        halves = sum(
            SequenceClassificationLoss(model, weights)(ids[s], labels[s]) for s in (slice(0, 3), slice(3, 6))
        )
    torch.testing.assert_close(plain / 6, F.cross_entropy(logits, labels))
    per_example = F.cross_entropy(logits, labels, reduction="none") * torch.tensor(weights)[labels]
    torch.testing.assert_close(weighted, per_example.sum())
    torch.testing.assert_close(halves, weighted)  # micro-batch sums add up to the global sum


def test_lora_classifier_trains_adapters_and_the_whole_head_only():
    torch.manual_seed(0)
    cfg = ModelConfig(
        hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, lora=LoraConfig(r=4)
    )
    model = build_model(cfg, 100, torch.device("cpu"), NAMES, PAD)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable)
    assert all(".lora_" in n or "score" in n for n in trainable), sorted(trainable)[:5]
    assert not any("embed_tokens" in n for n in trainable)
