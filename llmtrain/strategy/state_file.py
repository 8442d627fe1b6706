"""Small nested state (optimizer, LR schedule, loss scaler, RNG) as safetensors + JSON: no pickle.

`torch.save` pickles, and `torch.load(weights_only=False)` of a pickle runs whatever code it names:
a run directory someone hands you could execute code on resume. So our own state is split in two
files that load as data only: `<name>.safetensors` holds every tensor, `<name>.json` the structure
around them (dicts, lists, tuples, numbers, strings), with a tensor written as its safetensors key.

JSON has no tuples and only string keys, so those are tagged (`{"__tuple__": [...]}`,
`{"__items__": [[key, value], ...]}`): an optimizer's `state` is keyed by int parameter ids, and
its `betas`, like Python's RNG state, are tuples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TENSOR, TUPLE, ITEMS = "__tensor__", "__tuple__", "__items__"


class StateFileError(RuntimeError):
    """A state file pair is missing, unreadable, or holds something that is not plain data."""


def paths(stem: Path) -> tuple[Path, Path]:
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_state(state: Any, stem: Path) -> None:
    """Write `state` as `<stem>.safetensors` + `<stem>.json`."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            key = str(len(tensors))
            tensors[key] = value.detach().cpu().contiguous()
            return {TENSOR: key}
        if isinstance(value, tuple):
            return {TUPLE: [encode(v) for v in value]}
        if isinstance(value, list):
            return [encode(v) for v in value]
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {k: encode(v) for k, v in value.items()}
            return {ITEMS: [[k, encode(v)] for k, v in value.items()]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"{stem}: cannot store a {type(value).__name__} as plain data ({value!r:.80})")

    structure = encode(state)
    tensor_path, json_path = paths(stem)
    save_file(tensors, str(tensor_path))
    json_path.write_text(json.dumps(structure))


def load_state(stem: Path) -> Any:
    """Read back what `save_state` wrote (tensors on the CPU)."""
    tensor_path, json_path = paths(stem)
    for path in (tensor_path, json_path):
        if not path.is_file():
            raise StateFileError(f"{path}: missing (the checkpoint is incomplete or from another version)")
    try:
        tensors = load_file(str(tensor_path))
        structure = json.loads(json_path.read_text())
    except Exception as exc:
        raise StateFileError(f"{stem}.*: unreadable ({exc})") from exc

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if isinstance(value, dict):
            if TENSOR in value:
                return tensors[value[TENSOR]]
            if TUPLE in value:
                return tuple(decode(v) for v in value[TUPLE])
            if ITEMS in value:
                return {k: decode(v) for k, v in value[ITEMS]}
            return {k: decode(v) for k, v in value.items()}
        return value

    return decode(structure)


def load_state_or_legacy(stem: Path, legacy: Path) -> Any:
    """`load_state(stem)`, or a checkpoint from before this format: its pickle `legacy`, read with
    `weights_only=True` (tensors and containers only; anything else fails instead of running)."""
    if not paths(stem)[1].is_file() and legacy.is_file():
        try:
            return torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise StateFileError(
                f"{legacy}: refused to load this pickle: it holds more than tensors and containers "
                f"(torch.load(weights_only=True) said: {str(exc).splitlines()[0]}). Only resume run "
                "directories you trust."
            ) from exc
    return load_state(stem)
