"""Write a Hugging Face folder (config, safetensors, tokenizer) from any strategy's checkpoint."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from llmtrain.checkpoint import layout, manifest
from llmtrain.checkpoint.errors import CheckpointError
from llmtrain.config import from_yaml
from llmtrain.model.classifier import from_config as classifier_from_config
from llmtrain.model.classifier import is_classifier_config
from llmtrain.model.lora import is_lora_state, load_lora_model, merged_state_dict
from llmtrain.strategy import strategy_class

log = logging.getLogger(__name__)


def export_hf(
    checkpoint_or_run_dir: Path, out_dir: Path, adapter_only: bool = False, best: bool = False
) -> Path:
    """Consolidate the checkpoint's (possibly sharded) weights into `out_dir`; returns `out_dir`.

    Runs in one process, needs no GPU and no process group: each strategy knows how to read its
    own shards (`Strategy.consolidate`). A LoRA run is exported with its adapters merged into the
    base weights (a plain HF model), or with `adapter_only` as a peft adapter folder. A
    classification run is exported as its `*ForSequenceClassification` (config.json carries
    `id2label`/`label2id` and the pad id the head pools by). With `best`: the best evaluation's
    checkpoint (`trainer.early_stopping` / `trainer.keep_best`) of the run.
    """
    ckpt = _best(Path(checkpoint_or_run_dir)) if best else _verified(Path(checkpoint_or_run_dir))
    meta = layout.read_meta(ckpt)
    weights = strategy_class(meta.strategy).consolidate(ckpt / layout.MODEL_DIR)
    config = AutoConfig.from_pretrained(ckpt / layout.HF_CONFIG_DIR)
    if is_lora_state(weights):
        model_cfg = from_yaml(ckpt / layout.CONFIG).model
        lora = model_cfg.lora
        if adapter_only:
            if model_cfg.pretrained is None:
                log.warning("the LoRA base model was a random init: the adapter is only usable with it")
            out_dir = Path(out_dir)
            adapter = load_lora_model(config, weights, lora)
            adapter.peft_config["default"].base_model_name_or_path = model_cfg.pretrained
            adapter.save_pretrained(out_dir)
            _copy_tokenizer(ckpt, out_dir)
            log.info("exported the LoRA adapter of %s (step %d) to %s", ckpt, meta.step, out_dir)
            return out_dir
        weights = merged_state_dict(config, weights, lora)
    elif adapter_only:
        raise CheckpointError(
            f"{ckpt} holds no LoRA adapter (model.lora.r was 0); export it without --adapter-only"
        )
    if config.tie_word_embeddings:
        _fill_tied_embedding(weights)
    with torch.device("meta"):
        model = (
            classifier_from_config(config)
            if is_classifier_config(config)
            else AutoModelForCausalLM.from_config(config)
        )
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(
            f"{ckpt}: checkpoint weights do not match the model: missing {missing}, unexpected {unexpected}"
        )
    model.tie_weights()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    _copy_tokenizer(ckpt, out_dir)
    log.info("exported %s (step %d) to %s", ckpt, meta.step, out_dir)
    return out_dir


def _verified(path: Path) -> Path:
    """A step folder whose files match their manifest: the one named, or a run directory's newest."""
    if layout.is_complete(path):
        problem = manifest.verify(path)
        if problem is not None:
            raise manifest.NoVerifiedCheckpointError(f"cannot export {path}: {problem}")
        return path
    found = manifest.newest_verified(path)
    return found if found is not None else layout.resolve_checkpoint(path)  # raises: nothing there


def _best(path: Path) -> Path:
    """The step folder the run's newest verified checkpoint names as its best evaluation's."""
    run_dir = path.parent.parent if layout.is_complete(path) else path
    latest = _verified(run_dir)
    state = layout.read_trainer_state(latest)
    if state.get("best_step") is None:
        raise CheckpointError(
            f"{run_dir} tracked no best checkpoint ({latest} names none); train with "
            "trainer.early_stopping.metric=... or trainer.keep_best=true, or export without --best"
        )
    best = layout.checkpoints_dir(run_dir) / layout.step_dir_name(int(state["best_step"]))
    if not layout.is_complete(best):
        raise CheckpointError(f"{run_dir}: the best checkpoint {best} named by {latest} is missing")
    log.info(
        "best checkpoint: %s=%s at step %s",
        state.get("best_metric"),
        state.get("best_value"),
        state["best_step"],
    )
    return _verified(best)


def _fill_tied_embedding(weights: dict[str, torch.Tensor]) -> None:
    """Tied input/output embeddings are one tensor saved under either name (safetensors keeps one
    of a shared pair, engines differ in which): make both names present before loading."""
    pair = ("model.embed_tokens.weight", "lm_head.weight")
    for have, want in (pair, pair[::-1]):
        if have in weights and want not in weights:
            weights[want] = weights[have]


def _copy_tokenizer(ckpt: Path, out_dir: Path) -> None:
    tokenizer = ckpt.parent.parent / layout.TOKENIZER_DIR
    if tokenizer.is_dir():
        for f in tokenizer.iterdir():
            shutil.copy2(f, out_dir / f.name)
    else:
        log.warning("no tokenizer folder at %s: exported weights only", tokenizer)
