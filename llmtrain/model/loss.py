"""The module every strategy wraps: an HF causal LM whose forward returns the summed token loss.

Returning a *sum* (not a mean) lets the loop divide by the label-token count of the whole global
batch, so the loss is the exact token mean whatever the split into micro-batches and ranks.
Computing the loss inside `forward` keeps the root module's hooks (FSDP2, ZeRO-3) around all of it.

With `loss_chunk_tokens > 0` (the default) the loss comes from the decoder's hidden states through
`chunked_linear_cross_entropy`, so the full `[tokens, vocab]` logits are never built; 0 is the
Hugging Face way (full logits, upcast to fp32), kept as the reference the chunked path must match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from llmtrain.config import ConfigError
from llmtrain.model.chunked_ce import IGNORE_INDEX, chunked_linear_cross_entropy
from llmtrain.model.masking import attention_kwargs

__all__ = ["IGNORE_INDEX", "CausalLMLoss"]


class CausalLMLoss(nn.Module):
    def __init__(
        self,
        model: PreTrainedModel,
        document_masking: bool,
        loss_chunk_tokens: int = 0,
        compile_loss: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.document_masking = document_masking
        self.loss_chunk_tokens = loss_chunk_tokens
        self.compile_loss = compile_loss
        if loss_chunk_tokens:
            head = model.get_output_embeddings()
            if type(head) is not nn.Linear or head.bias is not None:
                raise ConfigError(
                    f"model.loss_chunk_tokens={loss_chunk_tokens} needs a plain bias-free nn.Linear lm_head, "
                    f"this model has {type(head).__name__} (LoRA on lm_head?); set model.loss_chunk_tokens=0"
                )

    def lm_head_weight(self) -> nn.Parameter:
        """The weight the chunked loss multiplies by (the embedding matrix when tied)."""
        return self.model.get_output_embeddings().weight

    def _attention_kwargs(self, document_ids: torch.Tensor | None) -> dict:
        attn_impl = self.model.config._attn_implementation
        dtype = next(self.model.parameters()).dtype
        return attention_kwargs(attn_impl, document_ids if self.document_masking else None, dtype)

    def logits(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        extra = self._attention_kwargs(document_ids)
        return self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **extra).logits

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if labels is None:
            # Generation: logits through the root module's forward, so sharded engines (FSDP2 root,
            # ZeRO-3) gather their weights exactly as in training (llmtrain.train.samples).
            return self.logits(input_ids, position_ids, document_ids)
        if self.loss_chunk_tokens:
            extra = self._attention_kwargs(document_ids)
            hidden = self.model.get_decoder()(
                input_ids=input_ids, position_ids=position_ids, use_cache=False, **extra
            ).last_hidden_state
            return chunked_linear_cross_entropy(
                hidden.flatten(0, 1),
                self.lm_head_weight(),
                labels.flatten(),
                self.loss_chunk_tokens,
                self.compile_loss,
            )
        logits = self.logits(input_ids, position_ids, document_ids)
        # Cross-entropy in fp32: bf16 log-softmax over a 32k+ vocabulary loses visible precision.
        return F.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
