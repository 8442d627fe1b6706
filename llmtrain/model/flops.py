"""Model FLOPs per token, for MFU.

Counts the matmuls of forward + backward (6 × parameters that take part in a matmul: every linear
layer and the lm_head, not the embedding lookup) plus attention scores and values,
12 × layers × heads × head_dim × seq_len (PaLM, appendix B). Causal masking is not discounted,
matching the convention of torchtitan and Megatron so MFU figures compare across projects.
"""

from __future__ import annotations

from transformers import PretrainedConfig


def matmul_params(config: PretrainedConfig) -> int:
    d = config.hidden_size
    heads = config.num_attention_heads
    kv = config.num_key_value_heads
    hd = getattr(config, "head_dim", None) or d // heads
    attn = d * heads * hd + 2 * d * kv * hd + heads * hd * d
    mlp = 3 * d * config.intermediate_size
    return config.num_hidden_layers * (attn + mlp) + d * config.vocab_size


def flops_per_token(config: PretrainedConfig, seq_len: int) -> float:
    heads = config.num_attention_heads
    hd = getattr(config, "head_dim", None) or config.hidden_size // heads
    attention = 12 * config.num_hidden_layers * heads * hd * seq_len
    return 6.0 * matmul_params(config) + attention
