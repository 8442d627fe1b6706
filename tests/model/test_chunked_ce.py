"""The chunked lm_head + cross-entropy must give the full-logits loss and gradients, in less memory."""

import pytest
import torch
import torch.nn.functional as F

from llmtrain.config import ConfigError, LoraConfig, ModelConfig
from llmtrain.metrics.memory import track_peak_allocation
from llmtrain.model.build import build_model
from llmtrain.model.chunked_ce import IGNORE_INDEX, chunked_linear_cross_entropy
from llmtrain.model.loss import CausalLMLoss

VOCAB = 1000


def _inputs(tokens=300, dim=32, vocab=VOCAB, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, dim, generator=g, requires_grad=True)
    weight = (0.3 * torch.randn(vocab, dim, generator=g)).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    labels[::7] = IGNORE_INDEX  # ignored positions scattered through every chunk
    return hidden, weight, labels


def _reference(hidden, weight, labels):
    return F.cross_entropy((hidden @ weight.t()).float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("chunk", [1, 64, 77, 300, 4096])
def test_loss_and_gradients_equal_the_full_logits_cross_entropy(chunk):
    hidden, weight, labels = _inputs()
    ref = _reference(hidden, weight, labels)
    ref_gh, ref_gw = torch.autograd.grad(ref * 0.37, (hidden, weight))
    loss = chunked_linear_cross_entropy(hidden, weight, labels, chunk)
    gh, gw = torch.autograd.grad(loss * 0.37, (hidden, weight))  # upstream scale reaches both grads
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-4, atol=1e-6)
    assert gh[::7].abs().max() == 0  # ignored tokens get no gradient


def test_compiled_chunks_give_the_full_logits_loss_and_gradients():
    # model.compile's path: each chunk (matmuls, softmax gradient, masking) is one compiled
    # function. 300 tokens in chunks of 128 leave a short last chunk (a second compiled shape).
    hidden, weight, labels = _inputs()
    ref = _reference(hidden, weight, labels)
    ref_gh, ref_gw = torch.autograd.grad(ref * 0.37, (hidden, weight))
    loss = chunked_linear_cross_entropy(hidden, weight, labels, 128, compiled=True)
    gh, gw = torch.autograd.grad(loss * 0.37, (hidden, weight))
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-4, atol=1e-6)
    assert gh[::7].abs().max() == 0
    weight.requires_grad_(False)  # frozen lm_head (LoRA): only the hidden states' gradient
    (gh_frozen,) = torch.autograd.grad(
        chunked_linear_cross_entropy(hidden, weight, labels, 128, compiled=True), (hidden,)
    )
    torch.testing.assert_close(gh_frozen, ref_gh / 0.37, rtol=1e-4, atol=1e-6)


def test_all_ignored_labels_give_zero_loss_and_zero_gradients():
    hidden, weight, labels = _inputs()
    labels[:] = IGNORE_INDEX
    loss = chunked_linear_cross_entropy(hidden, weight, labels, 64)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    assert loss.item() == 0 and gh.abs().max() == 0 and gw.abs().max() == 0


def test_frozen_weight_gets_no_gradient_and_no_grad_mode_returns_the_loss():
    hidden, weight, labels = _inputs()
    weight.requires_grad_(False)  # LoRA: lm_head frozen, only the hidden states need a gradient
    loss = chunked_linear_cross_entropy(hidden, weight, labels, 64)
    (gh,) = torch.autograd.grad(loss, (hidden,))
    torch.testing.assert_close(gh, torch.autograd.grad(_reference(hidden, weight, labels), hidden)[0])
    with torch.no_grad():
        torch.testing.assert_close(
            chunked_linear_cross_entropy(hidden, weight, labels, 64), _reference(hidden, weight, labels)
        )


def test_under_bf16_autocast_it_matches_the_autocast_full_logits_path():
    hidden, weight, labels = _inputs(dim=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _reference(hidden, weight, labels)  # autocast: bf16 matmul, fp32 loss
        loss = chunked_linear_cross_entropy(hidden, weight, labels, 64)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=2e-3, atol=0)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    ref_gh, ref_gw = torch.autograd.grad(ref, (hidden, weight))
    assert gh.dtype == hidden.dtype and gw.dtype == weight.dtype
    # bf16 matmuls on both sides; ours sums the weight gradient over chunks in fp32, so compare the
    # whole tensors' relative error rather than single small elements.
    assert (gh - ref_gh).norm() / ref_gh.norm() < 1e-2
    assert (gw - ref_gw).norm() / ref_gw.norm() < 1e-2


@pytest.mark.parametrize("tied", [False, True])
def test_model_loss_and_every_parameter_gradient_match_the_full_logits_path(tied):
    torch.manual_seed(0)
    model = build_model(ModelConfig(tie_word_embeddings=tied), VOCAB, torch.device("cpu"))
    ids = torch.randint(0, VOCAB, (3, 65))
    labels = ids[:, 1:].clone()
    labels[:, :9] = IGNORE_INDEX  # a prompt without loss, as in SFT
    results = []
    for chunk in (0, 50):
        model.zero_grad(set_to_none=True)
        loss = CausalLMLoss(model, document_masking=False, loss_chunk_tokens=chunk)(ids[:, :-1], labels)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (full, full_grads), (chunked, chunked_grads) = results
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=0)
    assert full_grads.keys() == chunked_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=2e-5, msg=name)


def test_peak_memory_of_the_chunked_loss_is_a_fraction_of_the_full_logits_path():
    hidden, weight, labels = _inputs(tokens=2048, dim=64, vocab=8000)
    logits_bytes = 2048 * 8000 * 4
    cpu = torch.device("cpu")
    with track_peak_allocation(cpu) as full:
        _reference(hidden, weight, labels).backward()
    with track_peak_allocation(cpu) as chunked:
        chunked_linear_cross_entropy(hidden, weight, labels, 256).backward()
    assert full.bytes >= 2 * logits_bytes  # logits and their gradient live at once
    assert chunked.bytes < logits_bytes / 2  # a few chunks' worth (chunk = 1/8 of the tokens)


def test_lora_on_the_lm_head_is_refused_with_the_key_to_change():
    model = build_model(
        ModelConfig(lora=LoraConfig(r=4, target_modules=["q_proj", "lm_head"])), VOCAB, torch.device("cpu")
    )
    with pytest.raises(ConfigError, match="model.loss_chunk_tokens=0"):
        CausalLMLoss(model, document_masking=False, loss_chunk_tokens=64)
