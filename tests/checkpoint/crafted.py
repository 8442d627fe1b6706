"""A pickle that runs code when loaded: it creates a marker file. Planted in checkpoints to prove
that loading them never unpickles it."""

from __future__ import annotations

import pathlib
from pathlib import Path

import torch


class TouchOnLoad:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def plant(path: Path, marker: Path) -> None:
    """Write a `torch.save` file at `path` whose loading (weights_only=False) creates `marker`."""
    torch.save({"optimizer": TouchOnLoad(marker)}, path)
