"""Config keys that moved: an old key on the command line fails naming its new place, and a run
directory's `config.yaml` written before the move still loads (so old runs resume and export)."""

from __future__ import annotations

import copy
from typing import Any

# old dotted key -> new dotted key (a key's sub-keys move with it).
MOVED_KEYS: dict[str, str] = {
    "strategy.zero_stage": "strategy.deepspeed.zero_stage",
    "strategy.offload_optimizer": "strategy.deepspeed.offload_optimizer",
    "strategy.offload_params": "strategy.deepspeed.offload_params",
    "strategy.overlap_comm": "strategy.deepspeed.overlap_comm",
    "strategy.contiguous_gradients": "strategy.deepspeed.contiguous_gradients",
    "strategy.reduce_bucket_size": "strategy.deepspeed.reduce_bucket_size",
    "strategy.ds_config": "strategy.deepspeed.config",
    "strategy.reshard_after_forward": "strategy.fsdp.reshard_after_forward",
    "strategy.cpu_offload": "strategy.fsdp.cpu_offload",
    "strategy.reduce_dtype": "strategy.fsdp.reduce_dtype",
    "strategy.timeout_s": "dist.timeout_s",
    "data.chat_template": "data.sft.chat_template",
    "data.system_prompt": "data.sft.system_prompt",
    "data.train_on_prompt": "data.sft.train_on_prompt",
    "data.truncation": "data.sft.truncation",
    "data.packing": "data.sft.packing",
    "data.fields": "data.sft.fields",
    "data.role_names": "data.sft.role_names",
    "data.max_examples": "data.sft.max_examples",
    "data.on_bad_example": "data.sft.on_bad_example",
    "data.synthetic_examples": "data.sft.synthetic_examples",
}
# Not in MOVED_KEYS because it depends on data.kind: for SFT, `data.format` (the row format) is now
# `data.sft.format`, and `data.format` is only the pretraining source format. See `migrate`.


def moved_to(dotted: str) -> str | None:
    """The new spelling of `dotted` if it (or a key above it) moved, else None."""
    for old, new in MOVED_KEYS.items():
        if dotted == old or dotted.startswith(old + "."):
            return new + dotted[len(old) :]
    return None


def migrate(tree: dict[str, Any]) -> dict[str, Any]:
    """A copy of a saved config tree with every moved key at its new place."""
    tree = copy.deepcopy(tree)
    for old, new in MOVED_KEYS.items():
        *old_parents, old_leaf = old.split(".")
        parent = tree
        for part in old_parents:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or old_leaf not in parent:
            continue
        value = parent.pop(old_leaf)
        *new_parents, new_leaf = new.split(".")
        target = tree
        for part in new_parents:
            target = target.setdefault(part, {})
        target[new_leaf] = value
    data = tree.get("data")
    if isinstance(data, dict) and data.get("kind") == "sft" and "format" in data:
        sft = data.setdefault("sft", {})
        if isinstance(sft, dict) and "format" not in sft:  # written before data.sft.format existed
            sft["format"] = data.pop("format")  # data.format falls back to its default
    return tree
