"""Which config keys differ: between two runs, or between a run and the defaults.

Both questions are answered on flattened dotted keys (`trainer.max_steps`), the same spelling a user
types as an override, so a run name or a comparison table can be pasted back on a command line.
Lists and empty dicts are leaves: `optim.betas=[0.9,0.95]` is one setting, not two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from llmtrain.config.load import conf_dir, load_config, to_dict
from llmtrain.config.schema import TrainConfig

# A key one config has and the other lacks (a run saved before the key existed).
MISSING = "<missing>"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` → `{"a.b": 1}`."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _as_tree(cfg: TrainConfig | Mapping[str, Any]) -> Mapping[str, Any]:
    return to_dict(cfg) if isinstance(cfg, TrainConfig) else cfg


def diff(
    base: TrainConfig | Mapping[str, Any], other: TrainConfig | Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """`{dotted key: (value in base, value in other)}` for every key whose value differs."""
    a, b = flatten(_as_tree(base)), flatten(_as_tree(other))
    return {
        key: (a.get(key, MISSING), b.get(key, MISSING))
        for key in sorted(a.keys() | b.keys())
        if a.get(key, MISSING) != b.get(key, MISSING)
    }


def differing_keys(configs: Sequence[TrainConfig | Mapping[str, Any]]) -> list[str]:
    """Dotted keys whose value is not the same in all `configs` (sorted)."""
    flats = [flatten(_as_tree(c)) for c in configs]
    keys = set().union(*flats) if flats else set()
    return sorted(k for k in keys if len({repr(f.get(k, MISSING)) for f in flats}) > 1)


def _config_groups() -> list[str]:
    """Config sections that are also Hydra groups (`conf/model/`, ...): a choice of file, not a value."""
    sections = {f.name for f in dataclasses.fields(TrainConfig)}
    return sorted(d.name for d in conf_dir().iterdir() if d.is_dir() and d.name in sections)


def overrides_from_defaults(cfg: TrainConfig) -> dict[str, Any]:
    """What this config changes relative to `load_config([])`, as `{dotted key: value}`.

    A group switch (`model=small`) changes every key of the group; listing them all would bury the
    one choice the user made. So a switched group is reported once, as `model.name`, and its other
    keys only where they differ from that group file's own values (`model=small model.num_layers=2`
    gives `model.name` and `model.num_layers`).
    """
    defaults = load_config([])
    switched = [
        group
        for group in _config_groups()
        if getattr(cfg, group).name != getattr(defaults, group).name
        and (conf_dir() / group / f"{getattr(cfg, group).name}.yaml").is_file()
    ]
    base = load_config([f"{g}={getattr(cfg, g).name}" for g in switched]) if switched else defaults
    changed = {key: new for key, (_, new) in diff(base, cfg).items()}
    changed.update({f"{g}.name": getattr(cfg, g).name for g in switched})
    return dict(sorted(changed.items()))
