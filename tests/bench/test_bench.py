"""The benchmark measures the work it says: same data on both sides, the split adds up, padding counted."""

import json

import pytest

from llmtrain.bench.run import run_benchmark
from llmtrain.config import load_config

pytestmark = pytest.mark.slow  # builds two models and runs a Trainer: ~20 s each


def _cfg(tmp_path, *overrides):
    return load_config(
        [
            f"data.cache_dir={tmp_path}/cache",
            "data.loader_workers=0",
            "trainer.device=cpu",
            "trainer.global_batch_size=4",
            "trainer.micro_batch_size=2",
            *overrides,
        ]
    )


def test_pretraining_bench_reports_split_memory_and_ratio_against_trainer(tmp_path, capsys, shared_data):
    # The Llama 2 vocab (32k): the logits are what the chunked loss saves, as on real models.
    cfg = _cfg(
        tmp_path,
        "data.seq_len=256",
        "model.loss_chunk_tokens=128",
        "data.synthetic_docs=200",
        f"data.tokenizer={shared_data / 'llama2_tokenizer.model'}",
    )
    ours, hf = run_benchmark(cfg, warmup=1, steps=4, vs_hf=True, json_path=tmp_path / "b.json")
    out = capsys.readouterr().out
    assert "llmtrain[single] / transformers.Trainer:" in out and "x tokens/s" in out
    # Same windows and global batch on both sides: the same token slots per step, none of them padding.
    assert ours.tokens_per_step == hf.tokens_per_step == 4 * 256
    assert ours.padding_share == 0 and hf.padding_share == 0
    # The split's parts are parts of the step (timed inside it), so they cannot exceed it.
    parts = ours.data_time_s + ours.phases_s["forward_backward"] + ours.phases_s["optimizer"]
    assert set(ours.phases_s) == {"forward_backward", "optimizer"}
    assert 0.5 * ours.step_time_s < parts <= ours.step_time_s * 1.01
    # The chunked loss (default) allocates less per step than the Trainer's full fp32 logits.
    assert 0 < ours.step_peak_bytes < hf.step_peak_bytes
    rows = json.loads((tmp_path / "b.json").read_text())
    assert [r["name"] for r in rows] == ["llmtrain[single]", "transformers.Trainer"]
    assert rows[0]["mfu"] > 0 and rows[0]["tokens_per_sec_per_rank"] == rows[0]["tokens_per_sec"]


def test_sft_bench_counts_the_trainers_padding_and_our_packing(tmp_path):
    cfg = _cfg(tmp_path, "+exp=sft", "data.seq_len=512", "data.sft.synthetic_examples=300")
    ours, hf = run_benchmark(cfg, warmup=1, steps=4, vs_hf=True)
    # Trainer: one example per row padded to the longest in its batch; ours packs rows full.
    assert hf.padding_share > 0.02
    assert ours.padding_share < hf.padding_share / 2
    assert hf.tokens_per_step < 4 * 512  # padded to the batch's longest example, not to seq_len
    assert ours.tokens_per_step == 4 * 512
