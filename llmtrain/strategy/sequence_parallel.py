"""Ulysses sequence parallelism on a plain Hugging Face model: attention over whole sequences from
sequence slices, with two all-to-alls of our own around the model's SDPA attention.

Each rank of a sequence-parallel group holds a contiguous slice of every sequence (`local_batch`)
and runs embeddings, norms, MLPs and the loss on it alone. Attention needs every key, so the
function registered with transformers' `AttentionInterface` swaps slices for heads: an all-to-all
scatters the heads and gathers the sequence (q/k/v [B, H, T/sp, D] -> [B, H/sp, T, D]), the model's
own SDPA attention runs on the full sequence with the full-sequence mask, and the inverse all-to-all
gives each rank its slice back with every head. RoPE is right because position ids are sliced with
the tokens (before the projections), and the document mask is built from document ids gathered over
the group, so packing keeps working.

Why our own all-to-alls and not DeepSpeed's `UlyssesSPAttentionHF`: it would make the FSDP path
import DeepSpeed (an optional, heavy package the CPU path must not need) and run its collectives
through `deepspeed.comm`, which wants DeepSpeed's own initialisation; it also fixes the sequence
length at construction unless told it varies. Two all-to-alls over our mesh's group, on plain
`torch.distributed` (gloo has `all_to_all_single`), are some 40 lines here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as tdist
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from llmtrain.config import ConfigError

ATTN_IMPLEMENTATION = "llmtrain_ulysses"
# What a slot added to make the length a multiple of sp holds (as in llmtrain.data.collate): no
# loss, position 0, no document; it sits after every real token, so causal attention never sees it.
_PAD_VALUES = {"input_ids": 0, "labels": -100, "position_ids": 0, "document_ids": -1}


class _AllToAll(torch.autograd.Function):
    """All-to-all over dim 0 (one chunk per rank); its own inverse, so backward is the same
    exchange of the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return all_to_all(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return all_to_all(grad, ctx.group), None


def all_to_all(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Chunk i of dim 0 goes to rank i of `group`; chunk j of the result came from rank j."""
    x = x.contiguous()
    out = torch.empty_like(x)  # after contiguous(): empty_like keeps a view's strides otherwise
    tdist.all_to_all_single(out, x, group=group)
    return out


def heads_to_sequence(x: torch.Tensor, group: Any) -> torch.Tensor:
    """[B, H, T/sp, D] sequence slice, all heads -> [B, H/sp, T, D] all of it, this rank's heads."""
    sp = tdist.get_world_size(group)
    b, h, t, d = x.shape
    chunks = x.reshape(b, sp, h // sp, t, d).transpose(0, 1)  # [sp (head chunk), B, H/sp, T/sp, D]
    gathered = _AllToAll.apply(chunks, group)  # [sp (sequence chunk), B, H/sp, T/sp, D]
    return gathered.permute(1, 2, 0, 3, 4).reshape(b, h // sp, sp * t, d)


def sequence_to_heads(x: torch.Tensor, group: Any) -> torch.Tensor:
    """The inverse of `heads_to_sequence`: [B, H/sp, T, D] -> [B, H, T/sp, D]."""
    sp = tdist.get_world_size(group)
    b, h, t, d = x.shape
    chunks = x.reshape(b, h, sp, t // sp, d).permute(2, 0, 1, 3, 4)  # [sp (sequence chunk), ...]
    scattered = _AllToAll.apply(chunks, group)  # [sp (head chunk), B, H/sp, T/sp, D]
    return scattered.transpose(0, 1).reshape(b, h * sp, t // sp, d)


class SequenceParallel:
    """One sequence-parallel group: slices batches, gathers document ids, and runs the attention
    registered as `llmtrain_ulysses` while `active()`; outside (generation, whose prompts every
    rank holds whole) that attention is plain SDPA."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.size = tdist.get_world_size(group)
        self.rank = tdist.get_rank(group)
        self._active = False
        AttentionInterface.register(ATTN_IMPLEMENTATION, self.attention)

    def apply(self, model: Any, tp: int = 1) -> None:
        """Route `model`'s attention through `attention`, after the checks a checkpoint's config
        could not have had (the schema checks the heads of a model it builds).

        Under tensor parallelism (`tp` > 1, applied first) each rank's attention sees its own
        num_heads / tp heads, and those are what the all-to-alls split over the sequence-parallel
        group: the heads must divide by tp × sp.
        """
        config = model.config
        if config._attn_implementation != "sdpa":
            raise ConfigError(
                f"parallel.sp needs model.attn_implementation=sdpa (got {config._attn_implementation}): "
                "the all-to-alls wrap PyTorch SDPA"
            )
        split = self.size * tp
        by = f"parallel.sp={self.size}" + (f" × parallel.tp={tp} = {split}" if tp > 1 else "")
        for key in ("num_attention_heads", "num_key_value_heads"):
            if getattr(config, key) % split:
                raise ConfigError(f"{by} does not divide the model's {key}={getattr(config, key)}")
        config._attn_implementation = ATTN_IMPLEMENTATION

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def local_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's contiguous slice of every sequence field; position ids are made (0..T-1)
        when the batch has none, so RoPE sees each token's place in the whole sequence."""
        ids = batch["input_ids"]
        if "position_ids" not in batch:
            positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
            batch = {**batch, "position_ids": positions}
        length = -(-ids.shape[1] // self.size) * self.size
        share = length // self.size
        out = {}
        for key, value in batch.items():
            if value is None or value.dim() < 2:
                out[key] = value
                continue
            if value.shape[1] < length:  # SFT rows are padded to the longest in the batch
                value = torch.nn.functional.pad(value, (0, length - value.shape[1]), value=_PAD_VALUES[key])
            out[key] = value[:, self.rank * share : (self.rank + 1) * share]
        return out

    def full_document_ids(self, document_ids: torch.Tensor) -> torch.Tensor:
        """The whole sequences' document ids from every rank's slice (the attention mask needs them)."""
        parts = [torch.empty_like(document_ids) for _ in range(self.size)]
        tdist.all_gather(parts, document_ids.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)

    def attention(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        if not self._active:
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        q, k, v = (heads_to_sequence(x, self.group) for x in (query, key, value))
        out, _ = sdpa_attention_forward(module, q, k, v, attention_mask, **kwargs)  # [B, T, H/sp, D]
        return sequence_to_heads(out.transpose(1, 2), self.group).transpose(1, 2), None
