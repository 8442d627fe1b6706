"""LoRA: only adapters train, the wrapped model starts identical to its base, and a LoRA state
merges back into plain HF weights that compute what the adapted model computed."""

from __future__ import annotations

import pytest
import torch

from llmtrain.config import ConfigError, LoraConfig, ModelConfig
from llmtrain.model.build import build_model
from llmtrain.model.lora import apply_lora, is_lora_state, load_lora_model, merged_state_dict

SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}


def tiny(lora_r: int = 0, targets: list[str] | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    lora = LoraConfig(r=lora_r, alpha=16, target_modules=targets or ["q_proj", "v_proj", "down_proj"])
    return build_model(ModelConfig(**SHAPE, lora=lora), 300, torch.device("cpu"))


def test_build_with_lora_trains_only_adapters_and_starts_as_the_base():
    base, adapted = tiny(0), tiny(8)
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=ids).logits, base(input_ids=ids).logits)


def test_merged_weights_compute_what_the_adapted_model_computes():
    adapted = tiny(8)
    with torch.no_grad():  # make the adapters non-trivial, as training would
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    weights = {k: v.detach().clone() for k, v in adapted.state_dict().items()}
    assert is_lora_state(weights)
    merged = merged_state_dict(
        adapted.config, weights, LoraConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    assert not is_lora_state(merged) and "model.layers.0.self_attn.q_proj.weight" in merged
    plain = tiny(0)
    plain.load_state_dict(merged)
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(
            plain(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-4, atol=1e-5
        )
    rebuilt = load_lora_model(
        adapted.config, weights, LoraConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(input_ids=ids).logits, adapted(input_ids=ids).logits)


def test_target_modules_that_match_nothing_are_a_config_error():
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        apply_lora(tiny(0), LoraConfig(r=4, target_modules=["c_attn"]))
