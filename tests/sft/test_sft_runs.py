"""SFT end to end through `launch/train.py`: the offline default learns and samples, real SFT data
trains under FSDP and ZeRO-3, LoRA trains under FSDP and ZeRO-2, and exports (merged, or the
adapter alone on a pretrained base) reload and generate with the training chat template."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from launcher import launch, read_metrics

from llmtrain.checkpoint.export import export_hf
from llmtrain.data.sft.chat_templates import CHAT_SETTINGS_FILE
from llmtrain.generate import run_generate

pytestmark = pytest.mark.slow

# Short, fast runs: tiny model, short rows, a few steps with a quick warmup and a high lr.
FAST = [
    "trainer.max_steps=8",
    "trainer.eval_every=4",
    "trainer.eval_batches=2",
    "trainer.log_every=2",
    "trainer.save_every=100",
    "trainer.global_batch_size=8",
    "trainer.micro_batch_size=2",
    "trainer.sample_max_new_tokens=6",
    "sched.warmup_steps=1",
    "optim.lr=3e-3",
    "data.loader_workers=0",
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "model.num_layers=2",
]


def alpaca(shared_data: Path) -> list[str]:
    return [
        "data=alpaca_demo",
        f"data.path={shared_data / 'alpaca_en_demo.json'}",
        f"data.tokenizer={shared_data / 'llama2_tokenizer.model'}",
        "data.seq_len=128",
        "data.sft.max_examples=300",
        "data.val_fraction=0.1",
    ]


def val_losses(run_dir: Path) -> list[float]:
    return [m["val_loss"] for m in read_metrics(run_dir) if "val_loss" in m]


def samples(run_dir: Path) -> list[dict]:
    path = run_dir / "samples.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sft_cache")


def test_default_sft_learns_samples_and_exports_a_chat_model(tmp_path: Path, cache: Path):
    run = tmp_path / "run"
    args = ["+exp=sft", *FAST, "trainer.max_steps=12", "trainer.eval_every=6", "data.seq_len=128",
            "data.sft.synthetic_examples=600", f"run.dir={run}", f"data.cache_dir={cache}"]  # fmt: skip
    launch("forked", 1, args)
    losses = val_losses(run)
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.3, losses
    rows = samples(run)
    assert {r["step"] for r in rows} == {0, 6, 12} and {r["prompt"] for r in rows} == {
        "What is 12 + 7?",
        "Reverse the word 'garden'.",
    }
    out = export_hf(run, tmp_path / "hf")
    assert json.loads((out / CHAT_SETTINGS_FILE).read_text())["chat_template"] == "chatml"
    (prompt, reply), = run_generate(out, ["What is 12 + 7?"], max_new_tokens=6, device="cpu")  # fmt: skip
    assert prompt == "What is 12 + 7?" and isinstance(reply, str)


def test_alpaca_full_finetune_under_fsdp(tmp_path: Path, shared_data: Path, cache: Path):
    run = tmp_path / "run"
    launch("forked", 2, ["+exp=sft", *FAST, *alpaca(shared_data), "strategy=fsdp", f"run.dir={run}",
                           f"data.cache_dir={cache}"])  # fmt: skip
    losses = val_losses(run)
    assert losses[-1] < losses[0] and all(math.isfinite(v) for v in losses), losses
    assert len(samples(run)) == 2 * 3  # two prompts at steps 0, 4, 8, generated with both ranks


def test_alpaca_full_finetune_under_zero3(tmp_path: Path, shared_data: Path, cache: Path):
    run = tmp_path / "run"
    launch("deepspeed", 2, ["+exp=sft", *FAST, *alpaca(shared_data), "strategy=zero3", f"run.dir={run}",
                            f"data.cache_dir={cache}"])  # fmt: skip
    losses = val_losses(run)
    assert losses[-1] < losses[0], losses
    assert len(samples(run)) == 2 * 3


@pytest.mark.parametrize("launcher,strategy", [("forked", "fsdp"), ("forked", "zero2")])
def test_lora_trains_and_merged_export_generates(tmp_path: Path, cache: Path, launcher: str, strategy: str):
    run = tmp_path / "run"
    args = ["+exp=sft_lora", *FAST, "optim.lr=1e-2", "data.seq_len=128", "data.sft.synthetic_examples=600",
            f"strategy={strategy}", f"run.dir={run}", f"data.cache_dir={cache}"]  # fmt: skip
    launch(launcher, 2, args)
    losses = val_losses(run)
    assert losses[-1] < losses[0], losses
    merged = export_hf(run, tmp_path / "merged")
    assert not (merged / "adapter_config.json").exists()
    assert len(run_generate(merged, ["What is 1 + 1?"], max_new_tokens=4, device="cpu")) == 1


def test_lora_on_a_pretrained_folder_exports_a_usable_adapter(tmp_path: Path, cache: Path):
    # A base model as our own pretraining would export it: train briefly, export, start LoRA from it.
    base_run = tmp_path / "base"
    launch("forked", 1, ["+exp=sft", *FAST, "trainer.max_steps=2", "trainer.eval_every=0", "data.seq_len=128",
                         "data.sft.synthetic_examples=600", "trainer.sample_prompts=[]", f"run.dir={base_run}",
                         f"data.cache_dir={cache}"])  # fmt: skip
    base = export_hf(base_run, tmp_path / "base_hf")
    run = tmp_path / "lora"
    launch("forked", 1, ["+exp=sft_lora", *FAST, "trainer.max_steps=2", "trainer.eval_every=0",
                         "data.seq_len=128", "data.sft.synthetic_examples=600", f"model.pretrained={base}",
                         f"run.dir={run}", f"data.cache_dir={cache}"])  # fmt: skip
    adapter = export_hf(run, tmp_path / "adapter", adapter_only=True)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base) and config["r"] == 16
    merged = export_hf(run, tmp_path / "merged")
    from_adapter = run_generate(adapter, ["What is 3 + 4?"], max_new_tokens=5, device="cpu")
    from_merged = run_generate(merged, ["What is 3 + 4?"], max_new_tokens=5, device="cpu")
    assert from_adapter == from_merged
