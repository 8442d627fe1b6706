"""Read a torch.distributed.checkpoint (DCP) folder as data only: no code from a crafted file runs.

DCP (torch 2.13) unpickles in two places without a guard: `FileSystemReader.read_metadata` reads
`.metadata` with a plain `pickle.load`, and `DefaultLoadPlanner.load_bytes` reads each non-tensor
entry (the optimizer's hyperparameters) with `torch.load(weights_only=False)`. Tensors themselves
are read with `weights_only=True`. Here `.metadata` is first parsed by an unpickler that only knows
DCP's own metadata classes, and every non-tensor entry by `torch.load(weights_only=True)`; what
passes then goes through DCP's own readers unchanged.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

# Everything a DCP `.metadata` written by torch 2.13 refers to (dtypes are checked separately).
METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file holds a pickle that refers to more than plain data. (Raised inside
    `dcp.load`, it reaches the caller inside DCP's CheckpointException, message kept.)"""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refers to {module}.{name}, which DCP metadata never holds")


class SafeFileSystemReader(FileSystemReader):
    """`FileSystemReader` whose `.metadata` must hold only DCP's metadata classes."""

    def read_metadata(self, *args: Any, **kwargs: Any):
        path = Path(self._get_metadata_path(kwargs.get("rank")))
        if not path.is_file():  # DCP's own error (it also looks for optional per-rank files)
            return super().read_metadata(*args, **kwargs)
        try:
            with open(path, "rb") as f:
                _MetadataUnpickler(f).load()
        except Exception as exc:
            raise UnsafeCheckpointError(
                f"{path}: refused to read this DCP metadata ({exc}); only resume or export run "
                "directories you trust"
            ) from exc
        return super().read_metadata(*args, **kwargs)


class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, but each non-tensor entry must load with `weights_only=True` first."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            torch.load(value, weights_only=True)
        except Exception as exc:
            raise UnsafeCheckpointError(
                f"DCP checkpoint entry {read_item.dest_index.fqn!r} is not plain data; refused to load it "
                f"({str(exc).splitlines()[0]})"
            ) from exc
        value.seek(0)
        super().load_bytes(read_item, value)
