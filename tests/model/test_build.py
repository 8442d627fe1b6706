import pytest
import torch

from llmtrain.config import ConfigError, ModelConfig, load_config
from llmtrain.model.build import build_model, hf_config, padded_vocab_size, resolve_attn_implementation
from llmtrain.model.flops import flops_per_token, matmul_params


def test_auto_attention_is_sdpa_without_cuda_and_flash_is_refused():
    assert resolve_attn_implementation("auto", torch.device("cpu")) == "sdpa"
    with pytest.raises(ConfigError, match="flash-attn"):
        resolve_attn_implementation("flash_attention_2", torch.device("cpu"))


def test_vocab_is_padded_to_the_multiple():
    assert padded_vocab_size(259, 64) == 320
    assert padded_vocab_size(32000, 64) == 32000


def test_llama3_2_1b_shape_has_the_published_parameter_count():
    cfg = load_config(["model=llama3_2_1b"]).model
    with torch.device("meta"):
        model = build_model(cfg, 128256, torch.device("meta"))
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 1.236e9) / 1.236e9 < 0.01  # Llama-3.2-1B: 1.24B with tied embeddings


def test_flops_per_token_matches_six_n_plus_attention():
    config = hf_config(ModelConfig(), 320)
    model = build_model(ModelConfig(), 320, torch.device("cpu"))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert matmul_params(config) == linear
    assert flops_per_token(config, 256) == 6 * linear + 12 * 4 * 4 * 32 * 256


def test_pretrained_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        build_model(ModelConfig(pretrained=str(tmp_path)), 320, torch.device("cpu"))


def test_selective_checkpointing_recomputes_only_every_nth_layer_with_the_same_gradients():
    torch.manual_seed(0)
    ids = torch.randint(0, 320, (2, 16))
    grads = {}
    for name, cfg in {
        "none": ModelConfig(num_layers=4),
        "all": ModelConfig(num_layers=4, gradient_checkpointing=True),
        "every2": ModelConfig(num_layers=4, gradient_checkpointing=True, checkpoint_every=2),
    }.items():
        torch.manual_seed(1)
        model = build_model(cfg, 320, torch.device("cpu"))
        model(input_ids=ids, labels=ids).loss.backward()
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters()])
        flags = [getattr(layer, "gradient_checkpointing", False) for layer in model.model.layers]
        if name == "every2":
            assert sum(flags) == 2, flags
    torch.testing.assert_close(grads["all"], grads["none"])
    torch.testing.assert_close(grads["every2"], grads["none"])


def test_liger_on_cpu_is_a_config_error_naming_the_key():
    """What it does not cover: the kernels themselves (Triton, CUDA only)."""
    with pytest.raises(ConfigError, match="model.liger=true needs a CUDA device"):
        build_model(ModelConfig(liger=True), 300, torch.device("cpu"))
