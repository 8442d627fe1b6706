"""Packed documents must not see each other: packed logits equal the documents run one at a time."""

import torch

from llmtrain.config import ModelConfig
from llmtrain.model.build import build_model
from llmtrain.model.loss import CausalLMLoss
from llmtrain.model.masking import attention_kwargs, block_causal_mask

LENGTHS = (11, 5, 16)


def _model(attn: str) -> CausalLMLoss:
    torch.manual_seed(0)
    return CausalLMLoss(build_model(ModelConfig(attn_implementation=attn), 300, torch.device("cpu")), True)


def _packed(docs):
    ids = torch.cat(docs)[None]
    pos = torch.cat([torch.arange(len(d)) for d in docs])[None]
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    return ids, pos, doc_ids


def test_block_causal_mask_is_causal_within_documents_only():
    mask = block_causal_mask(torch.tensor([[0, 0, 1, 1, -1]]))[0, 0]
    expected = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_packed_logits_equal_unpacked_under_sdpa_and_eager():
    torch.manual_seed(1)
    docs = [torch.randint(0, 300, (n,)) for n in LENGTHS]
    for attn in ("sdpa", "eager"):
        model = _model(attn).eval()
        ids, pos, doc_ids = _packed(docs)
        with torch.no_grad():
            packed = model.logits(ids, pos, doc_ids)[0]
            alone = torch.cat([model.logits(d[None], torch.arange(len(d))[None])[0] for d in docs])
        torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_without_the_mask_packed_documents_do_attend_to_each_other():
    """Negative control: the equality above is not vacuous."""
    torch.manual_seed(1)
    docs = [torch.randint(0, 300, (n,)) for n in LENGTHS]
    model = _model("sdpa").eval()
    ids = torch.cat(docs)[None]
    with torch.no_grad():
        contaminated = model.logits(ids, torch.arange(ids.shape[1])[None])[0, LENGTHS[0] :]
        alone = torch.cat([model.logits(d[None])[0] for d in docs[1:]])
    assert (contaminated - alone).abs().max() > 1e-2


def test_packed_per_document_losses_and_gradients_equal_unpacked():
    torch.manual_seed(2)
    docs = [torch.randint(0, 300, (n,)) for n in LENGTHS]
    model = _model("sdpa")
    ids, pos, doc_ids = _packed(docs)
    labels = torch.cat([torch.cat([d[1:], torch.tensor([-100])]) for d in docs])[None]
    model(ids, labels, pos, doc_ids).backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    total = sum(model(d[None], torch.cat([d[1:], torch.tensor([-100])])[None]) for d in docs)
    total.backward()
    for a, p in zip(packed_grads, model.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-4)


def test_flash_attention_gets_no_dense_mask():
    """flash-attn's varlen path reads document starts from position ids (not run here: needs CUDA)."""
    assert attention_kwargs("flash_attention_2", torch.zeros(1, 4, dtype=torch.long), torch.bfloat16) == {}
