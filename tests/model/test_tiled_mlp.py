"""`model.tiled_mlp`: the MLP run over sequence shards gives the untiled loss and gradients, and
really runs sharded (the MLP sees shard-sized inputs)."""

from __future__ import annotations

import pytest
import torch

from llmtrain.config import ConfigError, load_config
from llmtrain.model.build import build_model
from llmtrain.model.loss import CausalLMLoss

VOCAB, T = 256, 48


def _loss_and_grads(tiled: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[int]]:
    cfg = load_config(
        ["model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", f"model.vocab_size={VOCAB}",
         f"model.tiled_mlp={tiled}", "trainer.device=cpu"]
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg.model, VOCAB, torch.device("cpu"))
    seen: list[int] = []
    model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-2]))
    module = CausalLMLoss(model, document_masking=False, loss_chunk_tokens=0)
    gen = torch.Generator().manual_seed(1)
    ids, labels = (torch.randint(0, VOCAB, (2, T), generator=gen) for _ in range(2))
    loss = module(ids, labels)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, seen


def test_tiled_mlp_gives_the_untiled_loss_and_gradients_in_shards():
    ref_loss, ref_grads, ref_seen = _loss_and_grads(0)
    loss, grads, seen = _loss_and_grads(4)
    assert ref_seen == [T]  # forward only: no recompute without tiling
    # 4 sequence shards of each row forward (no grad); backward recomputes 4 shards of the
    # flattened batch × sequence tokens.
    assert seen == [T // 4] * 4 + [2 * T // 4] * 4
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_negative_tiled_mlp_is_a_config_error():
    with pytest.raises(ConfigError, match="model.tiled_mlp"):
        load_config(["model.tiled_mlp=-1"])
