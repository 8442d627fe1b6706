"""Sequence classification: a causal LM with transformers' `*ForSequenceClassification` head, and
the loss module every strategy wraps for it.

The head (`score`, a bias-free linear layer) reads the hidden state of the last non-pad token of
each row, as transformers does: rows are right-padded with `config.pad_token_id`, and the pad id
must not be a token the texts end with (our examples end with eos, the tokenizers pad with
`<pad>`/`<unk>`). `SequenceClassificationLoss` mirrors `CausalLMLoss`: forward returns the *sum*
of the per-example (weighted) cross-entropies, and the step divides by the example count of the
whole global batch (`labels` holds one class id per row, so the loop's label count is the example
count), which makes the loss the exact example mean over any split into micro-batches and ranks.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from llmtrain.config import ConfigError, ModelConfig
from llmtrain.model.precision import DTYPES


def label_maps(label_names: list[str]) -> tuple[dict[int, str], dict[str, int]]:
    return dict(enumerate(label_names)), {name: i for i, name in enumerate(label_names)}


def set_labels(config: PretrainedConfig, label_names: list[str], pad_token_id: int) -> None:
    """Head size, label names and pad id on an HF config (written into exports' config.json)."""
    config.id2label, config.label2id = label_maps(label_names)
    config.num_labels = len(label_names)
    config.pad_token_id = pad_token_id
    config.problem_type = "single_label_classification"


def from_config(
    config: PretrainedConfig, attn_implementation: str | None = None, dtype=None
) -> PreTrainedModel:
    model = AutoModelForSequenceClassification.from_config(
        config, attn_implementation=attn_implementation, dtype=dtype
    )
    # Exports and evaluation pick the class from this (a from_config model leaves it unset).
    model.config.architectures = [type(model).__name__]
    return model


def load_pretrained_classifier(
    path: Path, label_names: list[str], pad_token_id: int, attn_implementation: str, dtype
) -> PreTrainedModel:
    """A local HF folder (a causal LM or an exported classifier) with a head of our labels.

    A causal LM's folder has no `score` weight: transformers initialises it (and says so); an
    exported classifier with the same labels keeps its head.
    """
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    old = getattr(config, "id2label", None)
    if is_classifier_config(config) and old and list(old.values()) != label_names:
        raise ConfigError(
            f"model.pretrained={path} is a classifier of labels {list(old.values())}, the data's labels are "
            f"{label_names}; start from the base causal LM instead"
        )
    set_labels(config, label_names, pad_token_id)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, config=config, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
    )
    model.config.architectures = [type(model).__name__]
    return model


def is_classifier_config(config: PretrainedConfig) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def build_classifier_base(
    cfg: ModelConfig,
    hf_config: PretrainedConfig | None,
    label_names: list[str],
    pad_token_id: int,
    attn: str,
) -> PreTrainedModel:
    """The classifier before LoRA/checkpointing: from `model.pretrained`, or random init of `hf_config`."""
    dtype = DTYPES[cfg.dtype]
    if cfg.pretrained is not None:
        return load_pretrained_classifier(Path(cfg.pretrained), label_names, pad_token_id, attn, dtype)
    assert hf_config is not None
    set_labels(hf_config, label_names, pad_token_id)
    return from_config(hf_config, attn, dtype)


class SequenceClassificationLoss(nn.Module):
    """Wraps a `*ForSequenceClassification` model; forward returns the summed example loss."""

    # The strategies ask the wrapped module whether its loss reads the lm_head weight directly.
    loss_chunk_tokens = 0

    def __init__(self, model: PreTrainedModel, class_weights: list[float] | None = None) -> None:
        super().__init__()
        self.model = model
        self.class_weights = class_weights

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # No attention mask: rows are right-padded, so under causal attention no real token sees a
        # pad, and the pooled (last real) token is computed exactly as without the padding.
        logits = self.model(input_ids=input_ids, use_cache=False).logits
        if labels is None:
            return logits  # [B, num_labels]: prediction goes through the wrapped module too
        weight = None
        if self.class_weights is not None:
            weight = torch.tensor(self.class_weights, device=logits.device, dtype=torch.float32)
        # Sum of weight[y] × CE per example; the step divides by the global example count.
        return F.cross_entropy(logits.float(), labels, weight=weight, reduction="sum")
