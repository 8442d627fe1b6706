"""A W&B run's name, group and tags, derived from the config so a team can find and compare runs.

The name says what makes this run different (`default-lr=0.0003-model=small`); the group gathers
the runs of one experiment; the tags are the facets people filter by (model, strategy, data).
"""

from __future__ import annotations

from typing import Any

from llmtrain.config import TrainConfig
from llmtrain.config.diff import overrides_from_defaults

# Keys that say where a run writes or how often it reports, not what it trains: two runs that
# differ only in these are the same experiment, so they stay out of the name.
BOOKKEEPING_PREFIXES = ("run.", "logger.")
BOOKKEEPING_KEYS = frozenset(
    {
        "data.cache_dir",
        "data.shards_dir",
        "data.loader_workers",
        "data.prefetch_factor",
        "data.prep_workers",
        "trainer.log_every",
        "trainer.save_every",
        "trainer.keep_last",
        "trainer.device",
        "dist.timeout_s",
    }
)
MAX_NAME_CHARS = 128
MAX_TAG_CHARS = 64  # W&B rejects longer tags


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def name_parts(overrides: dict[str, Any]) -> list[str]:
    """`key=value` per meaningful override; group choices read `model=small`; leaf names when unique."""
    keys = [k for k in overrides if not k.startswith(BOOKKEEPING_PREFIXES) and k not in BOOKKEEPING_KEYS]
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    parts = []
    for key, leaf in zip(keys, leaves):
        if key.count(".") == 1 and leaf == "name":
            label = key.split(".")[0]
        elif leaves.count(leaf) == 1:
            label = leaf
        else:
            label = key
        parts.append(f"{label}={_value(overrides[key])}")
    return parts


def run_name(cfg: TrainConfig) -> str:
    """`logger.run_name`, else `run.name` plus the overrides that differ from the defaults."""
    if cfg.logger.run_name:
        return cfg.logger.run_name
    return "-".join([cfg.run.name, *name_parts(overrides_from_defaults(cfg))])[:MAX_NAME_CHARS]


def run_group(cfg: TrainConfig) -> str:
    return cfg.logger.group or cfg.run.name


def run_tags(cfg: TrainConfig) -> list[str]:
    """The user's tags first, then the run name and `model:`/`strategy:`/`data:` facets."""
    tags = [
        *cfg.logger.tags,
        cfg.run.name,
        f"model:{cfg.model.name}",
        f"strategy:{cfg.strategy.name}",
        f"data:{cfg.data.name}",
    ]
    return list(dict.fromkeys(t[:MAX_TAG_CHARS] for t in tags if t))
