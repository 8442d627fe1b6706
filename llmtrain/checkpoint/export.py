"""Write a Hugging Face folder (config, safetensors, tokenizer) from any strategy's checkpoint."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from llmtrain.checkpoint import layout
from llmtrain.strategy import strategy_class

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"


def export_hf(checkpoint_or_run_dir: Path, out_dir: Path) -> Path:
    """Consolidate the checkpoint's (possibly sharded) weights into `out_dir`; returns `out_dir`.

    Runs in one process, needs no GPU and no process group: each strategy knows how to read its
    own shards (`Strategy.consolidate`).
    """
    ckpt = layout.resolve_checkpoint(Path(checkpoint_or_run_dir))
    state = layout.read_trainer_state(ckpt)
    weights = strategy_class(state["strategy"]).consolidate(ckpt / "model")
    config = AutoConfig.from_pretrained(ckpt / "hf_config")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"{ckpt}: checkpoint weights do not match the model: missing {missing}, unexpected {unexpected}"
        )
    model.tie_weights()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer = ckpt.parent.parent / TOKENIZER_DIR
    if tokenizer.is_dir():
        for f in tokenizer.iterdir():
            shutil.copy2(f, out_dir / f.name)
    else:
        log.warning("no tokenizer folder at %s: exported weights only", tokenizer)
    log.info("exported %s (step %d) to %s", ckpt, state["step"], out_dir)
    return out_dir
