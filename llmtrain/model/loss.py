"""The module every strategy wraps: an HF causal LM whose forward returns the summed token loss.

Returning a *sum* (not a mean) lets the loop divide by the label-token count of the whole global
batch, so the loss is the exact token mean whatever the split into micro-batches and ranks.
Computing the loss inside `forward` keeps the root module's hooks (FSDP2, ZeRO-3) around all of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from llmtrain.model.masking import attention_kwargs

IGNORE_INDEX = -100


class CausalLMLoss(nn.Module):
    def __init__(self, model: PreTrainedModel, document_masking: bool) -> None:
        super().__init__()
        self.model = model
        self.document_masking = document_masking

    def logits(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attn_impl = self.model.config._attn_implementation
        dtype = next(self.model.parameters()).dtype
        extra = attention_kwargs(attn_impl, document_ids if self.document_masking else None, dtype)
        return self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **extra).logits

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = self.logits(input_ids, position_ids, document_ids)
        if labels is None:
            # Generation: logits through the root module's forward, so sharded engines (FSDP2 root,
            # ZeRO-3) gather their weights exactly as in training (llmtrain.train.samples).
            return logits
        # Cross-entropy in fp32: bf16 log-softmax over a 32k+ vocabulary loses visible precision.
        return F.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
