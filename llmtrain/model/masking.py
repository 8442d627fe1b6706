"""Attention masks that keep packed documents from attending to each other.

With SDPA, position ids alone do not separate documents (the kernel only sees a causal mask), so
packed samples get an explicit block-diagonal causal mask built from `document_ids`. Flash-attn's
varlen path instead reads the document starts from position ids that restart at 0, so it gets no
mask at all.
"""

from __future__ import annotations

import torch


def block_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] boolean mask, True where query t may attend key s: s <= t and same document.

    Padding carries document id -1 and so attends only to padding (never an empty row, which
    would make SDPA return NaN).
    """
    t = document_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=document_ids.device).tril()
    same_doc = document_ids[:, :, None] == document_ids[:, None, :]
    return (same_doc & causal)[:, None, :, :]


def attention_kwargs(
    attn_implementation: str, document_ids: torch.Tensor | None, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Extra forward kwargs for the chosen backend; empty when no document separation is needed."""
    if document_ids is None or attn_implementation == "flash_attention_2":
        return {}
    mask = block_causal_mask(document_ids)
    if attn_implementation == "eager":
        # Eager attention adds the mask to the scores, so it wants 0 / -inf-like floats.
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return {"attention_mask": additive.masked_fill_(~mask, torch.finfo(dtype).min)}
    return {"attention_mask": mask}
