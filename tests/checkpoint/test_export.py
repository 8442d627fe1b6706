"""A checkpoint exports to a Hugging Face folder that reloads with the same logits."""

from __future__ import annotations

import subprocess
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain.config import load_config
from llmtrain.model.build import build_model
from llmtrain.train.loop import train

REPO_LAUNCH = __import__("pathlib").Path(__file__).resolve().parents[2] / "launch" / "export_hf.py"


def test_exported_folder_reloads_with_identical_logits(tmp_path):
    cfg = load_config(
        [
            f"run.dir={tmp_path / 'run'}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.seq_len=64",
            "data.synthetic_docs=200",
            "trainer.max_steps=5",
            "trainer.eval_every=0",
            "sched.warmup_steps=1",
            "model.tie_word_embeddings=true",
        ]
    )
    result = train(cfg)
    out = tmp_path / "hf"
    subprocess.run([sys.executable, str(REPO_LAUNCH), str(result.run_dir), str(out)], check=True)

    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = build_model(cfg.model, 259, torch.device("cpu")).eval()
    reference.load_state_dict(load_file(result.last_checkpoint / "model" / "model.safetensors"), strict=False)
    reference.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tokenizer("To be, or not to be: 17 + 25 = 42.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, reference(ids).logits, rtol=0, atol=0)
    # Not a vacuous comparison: training moved the weights away from a fresh init.
    torch.manual_seed(cfg.trainer.seed)
    fresh = build_model(cfg.model, 259, torch.device("cpu")).eval()
    with torch.no_grad():
        assert (fresh(ids).logits - exported(ids).logits).abs().max() > 1e-3
