"""Build a Llama/Qwen2/Mistral-shaped causal LM from `ModelConfig`, or load a local HF folder."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from llmtrain.config import ConfigError, ModelConfig
from llmtrain.model.precision import DTYPES

log = logging.getLogger(__name__)


def resolve_attn_implementation(requested: str, device: torch.device) -> str:
    """`auto` means flash_attention_2 only where it can actually run, else PyTorch SDPA."""
    flash_ok = device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        return "flash_attention_2" if flash_ok else "sdpa"
    if requested == "flash_attention_2" and not flash_ok:
        raise ConfigError(
            "model.attn_implementation=flash_attention_2 needs CUDA and the flash-attn package "
            "(pip install 'llmtrain[flash]'); use auto or sdpa here"
        )
    return requested


def padded_vocab_size(tokenizer_vocab: int, multiple: int) -> int:
    """Round the embedding rows up so the lm_head matmul has GPU-friendly shapes."""
    return -(-tokenizer_vocab // multiple) * multiple


def enable_activation_checkpointing(model: PreTrainedModel, every_n_layers: int) -> None:
    """Recompute decoder-layer activations in backward (every layer, or every n-th to trade less).

    Non-reentrant checkpointing works with ZeRO-3/FSDP2 parameter hooks and with frozen inputs.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers
        )
    elif every_n_layers == 1:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ConfigError(
            "model.checkpoint_every > 1 needs transformers >= 5 (activation_checkpointing_enable)"
        )


def compile_blocks(model: PreTrainedModel) -> None:
    """torch.compile each decoder block in place, not the whole model.

    Blocks are identical, so one compiled graph serves them all (compile time does not grow with
    depth), and what wraps them later (activation checkpointing already applied, FSDP2 per block,
    ZeRO-3 hooks) stays outside the compiled region, as torchtitan does.
    """
    for layer in model.get_decoder().layers:
        layer.compile()


def apply_liger_kernels(model: PreTrainedModel, device: torch.device) -> None:
    """Swap RMSNorm, RoPE and SwiGLU for Liger's fused Triton kernels (GPU only, optional extra).

    Liger's own fused linear cross-entropy is left off: our chunked loss
    (`model.loss_chunk_tokens`) already never builds the logits, on every device.
    """
    if device.type != "cuda":
        raise ConfigError("model.liger=true needs a CUDA device: Liger's kernels are Triton GPU kernels")
    try:
        import liger_kernel.transformers as liger
    except ImportError as e:
        raise ConfigError(
            "model.liger=true needs the liger-kernel package: pip install 'llmtrain[liger]'"
        ) from e
    apply = getattr(liger, f"apply_liger_kernel_to_{model.config.model_type}", None)
    if apply is None:
        raise ConfigError(f"model.liger=true: liger-kernel has no kernels for {model.config.model_type}")
    apply(
        model=model,
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )


def hf_config(cfg: ModelConfig, vocab_size: int) -> PretrainedConfig:
    """The HF config for a model built from scratch (random init)."""
    head_dim = cfg.head_dim or cfg.hidden_size // cfg.num_heads
    return AutoConfig.for_model(
        cfg.arch,
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.init_std,
        use_cache=False,
    )


def build_model(
    cfg: ModelConfig,
    tokenizer_vocab: int,
    device: torch.device,
    label_names: list[str] | None = None,
    pad_token_id: int | None = None,
) -> PreTrainedModel:
    """A model ready to train: weights on `device`, backend chosen, checkpointing applied.

    With `label_names` a sequence classifier (`*ForSequenceClassification`, one output per label,
    pooling the last token that is not `pad_token_id`) instead of a causal LM.
    Random init draws from torch's global RNG, so the caller seeds it first for reproducibility.
    """
    attn = resolve_attn_implementation(cfg.attn_implementation, device)
    dtype = DTYPES[cfg.dtype]
    if label_names is not None:
        from llmtrain.model.classifier import build_classifier_base

        if pad_token_id is None:
            raise ValueError("a classifier needs the tokenizer's pad_token_id (last-token pooling)")
        vocab = cfg.vocab_size or padded_vocab_size(tokenizer_vocab, cfg.vocab_multiple)
        scratch = None if cfg.pretrained is not None else hf_config(cfg, vocab)
        model = build_classifier_base(cfg, scratch, label_names, pad_token_id, attn)
        if model.config.vocab_size < tokenizer_vocab:
            raise ConfigError(
                f"model vocab_size {model.config.vocab_size} is smaller than the tokenizer's {tokenizer_vocab} tokens"
            )
    elif cfg.pretrained is not None:
        path = Path(cfg.pretrained)
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model.pretrained={cfg.pretrained}: no Hugging Face config.json in that folder"
            )
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attn, local_files_only=True
        )
        if model.config.vocab_size < tokenizer_vocab:
            raise ConfigError(
                f"model.pretrained={cfg.pretrained} has vocab_size {model.config.vocab_size} but the tokenizer "
                f"has {tokenizer_vocab} tokens"
            )
    else:
        vocab = cfg.vocab_size or padded_vocab_size(tokenizer_vocab, cfg.vocab_multiple)
        if vocab < tokenizer_vocab:
            raise ConfigError(
                f"model.vocab_size={vocab} is smaller than the tokenizer's {tokenizer_vocab} tokens"
            )
        model = AutoModelForCausalLM.from_config(hf_config(cfg, vocab), attn_implementation=attn, dtype=dtype)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model, cfg.checkpoint_every)
    if cfg.liger:
        apply_liger_kernels(model, device)
    if cfg.lora.r > 0:
        from llmtrain.model.lora import apply_lora

        model = apply_lora(model, cfg.lora, cfg.pretrained, classifier=label_names is not None)
    if cfg.tiled_mlp:
        from llmtrain.model.tiled_mlp import apply_tiled_mlp

        apply_tiled_mlp(model, cfg.tiled_mlp)
    if cfg.compile:
        compile_blocks(model)
    log.info(
        "model: %s (%s), %.2fM parameters, attention=%s, dtype=%s",
        cfg.name,
        model.config.model_type,
        sum(p.numel() for p in model.parameters()) / 1e6,
        attn,
        cfg.dtype,
    )
    return model.to(device)
