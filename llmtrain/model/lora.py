"""LoRA adapters (peft) on a built model, and turning a LoRA checkpoint back into HF folders.

Adapters are applied to the plain HF model before any strategy wraps it, so every strategy sees an
ordinary module whose only trainable parameters are the adapters: DDP, ZeRO and FSDP2 all handle
frozen parameters, and the optimizer only receives parameters with `requires_grad`. Checkpoints
then hold peft's parameter names (`base_model.model.<hf name>` with `base_layer` / `lora_A` /
`lora_B`), which `merged_state_dict` and `adapter_state_dict` translate back for export.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from llmtrain.config import ConfigError, LoraConfig

log = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."


# A classifier's head is new (random init): it trains in full beside the adapters, and peft
# saves it with them (`modules_to_save`).
CLASSIFIER_HEAD = "score"


def peft_config(cfg: LoraConfig, base_model_path: str | None = None, classifier: bool = False) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        task_type="SEQ_CLS" if classifier else "CAUSAL_LM",
        modules_to_save=[CLASSIFIER_HEAD] if classifier else None,
        base_model_name_or_path=base_model_path,
    )


def apply_lora(
    model: nn.Module, cfg: LoraConfig, base_model_path: str | None = None, classifier: bool = False
) -> nn.Module:
    """Wrap `model` in a peft LoRA model: base weights frozen, adapters trainable (and, for a
    classifier, its `score` head).

    LoRA's B matrices start at zero, so the wrapped model computes exactly what `model` did.
    """
    from peft import get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in present]
    if len(missing) == len(cfg.target_modules):
        raise ConfigError(
            f"model.lora.target_modules={list(cfg.target_modules)}: none of them is a module of this model "
            f"(module names include {', '.join(sorted(present)[:12])})"
        )
    peft_model = get_peft_model(model, peft_config(cfg, base_model_path, classifier))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info(
        "LoRA r=%d alpha=%d on %s: %.3fM trainable of %.2fM parameters (%.2f%%)",
        cfg.r,
        cfg.alpha,
        ",".join(t for t in cfg.target_modules if t not in missing),
        trainable / 1e6,
        total / 1e6,
        100 * trainable / total,
    )
    return peft_model


def is_lora_state(weights: dict[str, torch.Tensor]) -> bool:
    return any(".lora_A." in k for k in weights)


def merged_state_dict(
    hf_config: Any, weights: dict[str, torch.Tensor], cfg: LoraConfig
) -> dict[str, torch.Tensor]:
    """HF-named full weights with the adapters merged in (W + B A · alpha / r), from a LoRA state."""
    merged = load_lora_model(hf_config, weights, cfg).merge_and_unload()
    return {k: v.detach().cpu() for k, v in merged.state_dict().items()}


def load_lora_model(hf_config: Any, weights: dict[str, torch.Tensor], cfg: LoraConfig) -> Any:
    """The peft model rebuilt from a LoRA checkpoint's weights (to merge, or to save the adapter)."""
    from transformers import AutoModelForCausalLM

    from llmtrain.model.classifier import from_config, is_classifier_config

    # Built on CPU in the weights' dtype: merging needs real tensors, and the base weights are
    # replaced by the checkpoint's right after.
    dtype = next(iter(weights.values())).dtype
    classifier = is_classifier_config(hf_config)
    if classifier:
        base = from_config(hf_config, dtype=dtype)
    else:
        base = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    model = apply_lora(base, cfg, classifier=classifier)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {f"{PEFT_PREFIX}lm_head.weight"} if hf_config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"LoRA checkpoint does not match model.lora={cfg}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return model
