"""Ulysses sequence parallelism under DeepSpeed ZeRO: DeepSpeed's own `UlyssesSPAttentionHF` (Arctic
Long Sequence Training) around the model's SDPA attention, on process groups from our mesh.

What DeepSpeed brings and what stays ours:
- **Attention**: `UlyssesSPAttentionHF` does the two all-to-alls (its `dim_zero_all_to_all`
  operator, differentiable and compile-safe) and calls the core attention on whole sequences for
  a share of the heads. It also replicates key/value heads when sp exceeds their count.
- **Groups**: DeepSpeed gets an `mpu` (`UlyssesGroups`) whose groups are dims of the mesh
  `llmtrain.dist.data_parallel_mesh` built, so dist.py stays the one place groups are made.
  `UlyssesSPAttentionHF.register_with_transformers` would instead make its own groups
  (`parallel_state_sp.initialize_sequence_parallel`) with a layout of its choosing.
- **Masks (why we do not use `register_with_transformers`)**: its wrapper drops every 4-D
  attention mask and leaves causality to the kernel (`is_causal` for SDPA); it relies on position
  ids that restart per document, which only flash-attn's varlen path reads. Under SDPA packed SFT
  examples would attend to each other. We call `UlyssesSPAttentionHF` ourselves and pass the
  full-sequence block mask `CausalLMLoss` builds from the gathered document ids, exactly as the
  FSDP path does (`llmtrain.strategy.sequence_parallel`).
- **Slicing**: batches are cut by `SequenceParallel.local_batch`, the same slices the FSDP path
  trains on (position ids made and sliced with the tokens, padding to a multiple of sp).

Gradients: DeepSpeed shards ZeRO state and reduces gradients over the sequence-data-parallel group
(dp × sp ranks), dividing by dp only (`seq_dp_world_size / sequence_parallel_size`): gradients
are summed over sequence-parallel peers, as each holds its own tokens' share of the loss, and the
strategy's `dp_size` backward scale stays what it is without sp.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as tdist
from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from llmtrain.dist import Meshes
from llmtrain.strategy.sequence_parallel import SequenceParallel


class UlyssesGroups:
    """The `mpu` DeepSpeed reads its parallel groups from, each a dim of our mesh, in the shape of
    DeepSpeed's own sequence-parallel state (`parallel_state_sp`), which its engine special-cases:

    - sequence data parallel (dp × sp ranks): ZeRO partitions parameters, gradients and optimizer
      states over it and reduces gradients over it, dividing by dp only;
    - sequence parallel: the Ulysses group;
    - data parallel (dp ranks only) is deliberately *not* a method: DeepSpeed then derives its
      data-parallel size as world / sp (`DeepSpeedConfig`: train_batch_size = micro ×
      accumulation × dp), while `zero.Init` under ZeRO-3 partitions over `get_data_parallel_group()`
      whenever the mpu has one. Given the dp-only group, parameters were partitioned over 1 rank
      and never reduced over sp: each rank kept the gradient of its own half of the tokens (lm_head
      gradient norm 0.705 against 0.986 in one process, 1/√2 of it);
    - `initialize_sequence_parallel` is the attribute DeepSpeed recognises this kind of mpu by (it
      then treats the model-parallel size as 1 and takes no model-parallel group in ZeRO). Our
      groups exist already, so calling it is an error;
    - model parallel: the size-1 tp dim, a real 1-rank group rather than None, for the DeepSpeed
      helpers that all-reduce over `get_model_parallel_group()` directly (None is the world there).
    """

    def __init__(self, meshes: Meshes) -> None:
        mesh = meshes.mesh
        if mesh is None or meshes.sp_group is None:
            raise ValueError("UlyssesGroups needs the named mesh data_parallel_mesh builds with sp > 1")
        self._groups = {
            "sequence_data": meshes.fsdp.get_group(),
            "sequence": meshes.sp_group,
            "model": mesh["tp"].get_group(),
        }

    @staticmethod
    def initialize_sequence_parallel(sequence_parallel_size: int) -> None:
        raise RuntimeError(
            "the sequence-parallel groups come from llmtrain.dist.data_parallel_mesh; DeepSpeed must not "
            f"make its own (asked for sequence_parallel_size={sequence_parallel_size})"
        )

    def _size(self, kind: str) -> int:
        return tdist.get_world_size(self._groups[kind])

    def _rank(self, kind: str) -> int:
        return tdist.get_rank(self._groups[kind])

    def get_sequence_data_parallel_group(self) -> Any:
        return self._groups["sequence_data"]

    def get_sequence_data_parallel_world_size(self) -> int:
        return self._size("sequence_data")

    def get_sequence_data_parallel_rank(self) -> int:
        return self._rank("sequence_data")

    def get_sequence_parallel_group(self) -> Any:
        return self._groups["sequence"]

    def get_sequence_parallel_world_size(self) -> int:
        return self._size("sequence")

    def get_sequence_parallel_rank(self) -> int:
        return self._rank("sequence")

    def get_model_parallel_group(self) -> Any:
        return self._groups["model"]

    def get_model_parallel_world_size(self) -> int:
        return self._size("model")

    def get_model_parallel_rank(self) -> int:
        return self._rank("model")


class DeepSpeedUlysses(SequenceParallel):
    """`SequenceParallel`'s slicing, document-id gathering and on/off switch, with DeepSpeed's
    `UlyssesSPAttentionHF` as the attention registered for the model."""

    def __init__(self, group: Any) -> None:
        super().__init__(group)
        # UlyssesSPAttentionHF checks every call against the micro-batch size it was built for;
        # eval and a short last batch may differ, so there is one per batch size seen.
        self._by_batch: dict[int, UlyssesSPAttentionHF] = {}
        self._config: Any = None

    def apply(self, model: Any) -> None:
        super().apply(model)
        self._config = model.config.get_text_config()

    def _ulysses(self, batch_size: int) -> UlyssesSPAttentionHF:
        if batch_size not in self._by_batch:
            cfg = self._config
            self._by_batch[batch_size] = UlyssesSPAttentionHF(
                attn=sdpa_attention_forward,
                batch_size=batch_size,
                attn_head_count=cfg.num_attention_heads,
                attn_head_size=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
                kv_head_count=cfg.num_key_value_heads,
                num_hidden_layers=cfg.num_hidden_layers,
                process_group=self.group,
                # SFT batches are as long as their longest row (padded to a multiple of sp).
                seq_length_is_variable=True,
            )
        return self._by_batch[batch_size]

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
        # The mask is the full-sequence block mask (or None for unpacked rows: SDPA is then causal
        # over the whole gathered sequence). UlyssesSPAttentionHF also all-gathers position_ids,
        # which SDPA ignores; it asserts they are passed, and HF's decoder layers pass them.
        out, _ = self._ulysses(query.shape[0])(module, query, key, value, attention_mask, **kwargs)
        return out, None  # [B, T/sp, H × D]: HF's attention layer reshapes to that anyway
