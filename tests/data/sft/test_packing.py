"""Packing: a deterministic plan that places every example once within capacity, and packed rows
that compute exactly what each example computes alone (no attention or labels across examples)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llmtrain.config import DataConfig, ModelConfig, SFTConfig
from llmtrain.data import ensure_prepared
from llmtrain.data.collate import collate
from llmtrain.data.loader import build_train_loader
from llmtrain.data.sft.dataset import SFTExamples, SFTRows, example_tensors
from llmtrain.data.sft.packing import one_per_row, pack_examples, packing_efficiency
from llmtrain.model.build import build_model
from llmtrain.model.loss import IGNORE_INDEX, CausalLMLoss


def test_plan_places_every_example_once_within_capacity_deterministically():
    lengths = np.random.default_rng(0).integers(1, 200, size=3000)
    rows = pack_examples(lengths, 256, seed=0, buffer=1000)
    placed = np.concatenate(rows)
    assert sorted(placed.tolist()) == list(range(3000))
    assert max(int(lengths[r].sum()) for r in rows) <= 256
    assert [r.tolist() for r in rows] == [
        r.tolist() for r in pack_examples(lengths, 256, seed=0, buffer=1000)
    ]
    assert packing_efficiency(rows, lengths, 256) > 0.95
    assert packing_efficiency(one_per_row(3000), lengths, 256) < 0.5


def test_plan_rejects_an_example_longer_than_a_row():
    with pytest.raises(ValueError, match="1..8"):
        pack_examples(np.array([3, 9]), 8, seed=0)


def test_alpaca_demo_packs_densely(tmp_path: Path, shared_data: Path):
    cfg = DataConfig(
        name="alpaca",
        kind="sft",
        path=str(shared_data / "alpaca_en_demo.json"),
        tokenizer=str(shared_data / "llama2_tokenizer.model"),
        sft=SFTConfig(format="alpaca", chat_template="chatml", packing=True),
        seq_len=512,
        document_masking=True,
        cache_dir=str(tmp_path),
    )
    examples = SFTExamples(ensure_prepared(cfg), "train")
    inputs = examples.lengths - 1
    rows = pack_examples(inputs, 512, seed=0)
    assert packing_efficiency(rows, inputs, 512) > 0.95
    assert packing_efficiency(one_per_row(len(examples)), inputs, 512) < 0.5


@pytest.fixture(scope="module")
def tiny_loss_module() -> CausalLMLoss:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)
    model = build_model(cfg, 300, torch.device("cpu"))
    assert model.config._attn_implementation == "sdpa"
    return CausalLMLoss(model.eval(), document_masking=True).eval()


def random_example(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.integers(0, 259, size=n)
    mask = (rng.random(n) < 0.6).astype(np.uint8)
    mask[-1] = 1
    return ids, mask


def test_packed_row_equals_each_example_alone(tiny_loss_module: CausalLMLoss):
    rng = np.random.default_rng(1)
    examples = [random_example(rng, n) for n in (17, 40, 9, 25)]
    packed = collate(
        [SFTRows(examples, [np.arange(4)])[0], example_tensors(*examples[0], 0)], pad_id=0
    )  # a second, shorter row adds padding to the batch
    with torch.no_grad():
        logits = tiny_loss_module(packed["input_ids"], None, packed["position_ids"], packed["document_ids"])
        start = 0
        for slot, (ids, mask) in enumerate(examples):
            alone = {k: v[None] for k, v in example_tensors(ids, mask, 0).items()}
            n = alone["input_ids"].shape[1]
            alone_logits = tiny_loss_module(alone["input_ids"], None, alone["position_ids"])
            torch.testing.assert_close(logits[0, start : start + n], alone_logits[0], rtol=1e-5, atol=1e-5)
            labels = packed["labels"][0, start : start + n]
            assert torch.equal(labels, alone["labels"][0])
            assert (packed["document_ids"][0, start : start + n] == slot).all()
            loss_packed = torch.nn.functional.cross_entropy(
                logits[0, start : start + n], labels, ignore_index=IGNORE_INDEX, reduction="sum"
            )
            loss_alone = tiny_loss_module(alone["input_ids"], alone["labels"], alone["position_ids"])
            torch.testing.assert_close(loss_packed, loss_alone, rtol=1e-5, atol=1e-5)
            start += n


def test_the_check_detects_a_leak(tiny_loss_module: CausalLMLoss):
    # The control for the test above: the same row as one plain causal sequence (no document ids,
    # positions not restarting) lets the second example attend to the first, and it shows.
    rng = np.random.default_rng(1)
    examples = [random_example(rng, n) for n in (17, 40)]
    row = SFTRows(examples, [np.arange(2)])[0]
    with torch.no_grad():
        sep = tiny_loss_module(
            row["input_ids"][None], None, row["position_ids"][None], row["document_ids"][None]
        )
        mixed = CausalLMLoss(tiny_loss_module.model, document_masking=False)(row["input_ids"][None], None)
    assert torch.allclose(sep[0, :16], mixed[0, :16], atol=1e-5)
    assert (sep[0, 16:] - mixed[0, 16:]).abs().max() > 1e-3


def first_batches(cfg: DataConfig, folder: Path, start_step: int, n: int) -> list[dict[str, torch.Tensor]]:
    it = iter(build_train_loader(cfg, folder, 4, 2, 0, 1, seed=3, start_step=start_step))
    return [next(it) for _ in range(n)]


def test_sft_loader_resumes_at_a_step_and_pads_unpacked_batches(tmp_path: Path):
    data = tmp_path / "d.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}" * (1 + i % 7)},
                {"role": "assistant", "content": "a" * i},
            ]
        }
        for i in range(64)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = dict(name="t", kind="sft", path=str(data), tokenizer="byte")
    for packing in (True, False):
        sft = SFTConfig(format="messages", chat_template="chatml", packing=packing)
        cfg = DataConfig(**common, sft=sft, seq_len=96, document_masking=packing, val_fraction=0.0,
                         cache_dir=str(tmp_path / "cache"), loader_workers=0)  # fmt: skip
        folder = ensure_prepared(cfg)

        straight = first_batches(cfg, folder, start_step=0, n=6)
        resumed = first_batches(cfg, folder, start_step=1, n=4)  # step 1 starts at micro-batch 2
        for a, b in zip(straight[2:], resumed, strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a)
        for batch in straight:
            pad = batch["document_ids"] == -1
            assert (batch["labels"][pad] == IGNORE_INDEX).all()
            if not packing:
                assert batch["document_ids"].max() == 0  # one example per row
