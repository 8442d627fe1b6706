"""Compose `conf/` with command-line overrides into a validated `TrainConfig`.

We use Hydra's compose API rather than `@hydra.main`: every rank parses the same overrides the same
way, nothing changes the working directory, and no `${now:}` output folder is created per rank (the
run directory is fixed once per job by `llmtrain.train.rundir`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llmtrain.config.checks import ConfigError
from llmtrain.config.moved import migrate, moved_to
from llmtrain.config.schema import TrainConfig

DEFAULT_CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
_SCHEMA_NAME = "train_schema"

ConfigStore.instance().store(name=_SCHEMA_NAME, node=TrainConfig)

# deepspeed's launcher appends `--local_rank=N` to every rank's argv; Hydra would reject it.
_LOCAL_RANK_ARG = re.compile(r"^--local[_-]rank(=\d+)?$")


def conf_dir() -> Path:
    return Path(os.environ.get("LLMTRAIN_CONF_DIR", DEFAULT_CONF_DIR)).resolve()


def strip_launcher_args(argv: Sequence[str]) -> list[str]:
    """Drop `--local_rank N` / `--local_rank=N`; the local rank is read from LOCAL_RANK instead."""
    out: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if _LOCAL_RANK_ARG.match(arg):
            skip_next = "=" not in arg
            continue
        out.append(arg)
    return out


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose the raw (unvalidated) config; errors name the key and the keys that do exist."""
    overrides = strip_launcher_args(overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        try:
            return compose(config_name=config_name, overrides=list(overrides))
        except Exception as exc:  # Hydra wraps OmegaConf errors; rewrite them for people.
            raise ConfigError(_explain(exc, overrides)) from exc


def load_config(overrides: Sequence[str] = (), config_name: str = "train") -> TrainConfig:
    """Compose, then build the typed dataclasses (running every `__post_init__` check)."""
    raw = compose_config(overrides, config_name)
    _reject_unknown_keys(raw)
    try:
        cfg = OmegaConf.to_object(raw)
    except OmegaConfBaseException as exc:
        raise ConfigError(_explain(exc, overrides)) from exc
    assert isinstance(cfg, TrainConfig)
    return cfg


def _reject_unknown_keys(raw: DictConfig) -> None:
    """Fail on keys the schema does not have. Hydra lets `+key=value` (and a config file) add a key
    to a typed section, and building the dataclasses would then drop it silently; only free-form
    dict fields (`strategy.deepspeed.config`, `data.fields`) may hold keys of the user's choosing."""

    def walk(node: DictConfig, schema: DictConfig, prefix: str) -> None:
        for key in node:
            dotted = f"{prefix}{key}"
            if key not in schema:
                raise ConfigError(_unknown_key_message(dotted))
            child, typed = node._get_node(key), schema._get_node(key)
            nested = isinstance(child, DictConfig) and isinstance(typed, DictConfig)
            if nested and dataclasses.is_dataclass(OmegaConf.get_type(typed)):
                walk(child, typed, dotted + ".")

    walk(raw, OmegaConf.structured(TrainConfig), "")


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def from_yaml(path: str | Path) -> TrainConfig:
    """Read a resolved `config.yaml` saved in a run directory back into a `TrainConfig`.

    Keys that have moved since the file was written are read at their new place.
    """
    saved = migrate(OmegaConf.to_container(OmegaConf.load(path)))  # type: ignore[arg-type]
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def _explain(exc: BaseException, overrides: Sequence[str]) -> str:
    """Turn a Hydra/OmegaConf failure into one message that names the key and nearby valid keys."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    text = " | ".join(str(e).strip().splitlines()[0] for e in chain if str(e).strip())
    options = re.search(r"Available options in '([^']+)':\n((?:\t.*\n?)+)", "\n".join(str(e) for e in chain))
    if options:  # a group option that does not exist: say which ones do
        names = ", ".join(line.strip() for line in options.group(2).splitlines() if line.strip())
        text += f"; available options in '{options.group(1)}': {names}"
    full_key = next((getattr(e, "full_key", None) for e in chain if getattr(e, "full_key", None)), None)
    missing = re.search(r"Key '([^']+)' not in '(\w+)'", " ".join(str(e) for e in chain))
    if missing is None:
        return f"invalid config: {text}" + (f" (key: {full_key})" if full_key else "")
    bad = missing.group(1)
    parent = _parent_of(bad, overrides, full_key)
    return _unknown_key_message(f"{parent}.{bad}" if parent else bad)


def _unknown_key_message(dotted: str) -> str:
    """`dotted` is not in the schema: its new name if it moved, else the nearest keys that exist."""
    new_place = moved_to(dotted)
    if new_place is not None:
        return f"config key '{dotted}' has moved to '{new_place}'; use that name"
    parent, _, bad = dotted.rpartition(".")
    siblings = _keys_at(parent)
    hint = difflib.get_close_matches(bad, siblings, n=3)
    msg = f"unknown config key '{dotted}'"
    if hint:
        msg += f"; did you mean {', '.join(f'{parent}.{h}' if parent else h for h in hint)}?"
    if siblings:
        msg += f" Keys under '{parent or '<root>'}': {', '.join(siblings)}."
    return msg + " (Add a new key with '+key=value' only if the schema allows it.)"


def _parent_of(bad: str, overrides: Sequence[str], full_key: str | None) -> str:
    if full_key and full_key.endswith(bad):
        return full_key[: -len(bad)].rstrip(".")
    for ov in overrides:
        key = ov.lstrip("+~").split("=", 1)[0]
        if key.split(".")[-1] == bad:
            return ".".join(key.split(".")[:-1])
    return ""


def _keys_at(parent: str) -> list[str]:
    node: Any = OmegaConf.structured(TrainConfig)
    for part in filter(None, parent.split(".")):
        node = node.get(part) if isinstance(node, DictConfig) else None
        if node is None:
            return []
    return sorted(node.keys()) if isinstance(node, DictConfig) else []
