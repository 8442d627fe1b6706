"""Read what an offline W&B run wrote, for tests: the records of its `run-<id>.wandb` file.

wandb 0.31 writes this file from its Go core and no longer ships the Python `DataStore` reader, so
this is a small reader of the same format: a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then
LevelDB-log style 32 KiB blocks of chunks (crc32 4 bytes, length 2 bytes LE, type 1 byte; FULL=1,
FIRST=2, MIDDLE=3, LAST=4) whose payloads are serialized `Record` protobufs.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = b":W&B" + struct.pack("<H", 0xBEE1) + b"\x00"
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    assert data[: len(HEADER)] == HEADER, f"{path} does not start with the W&B log header"
    records: list[pb.Record] = []
    pos, pending = len(HEADER), b""
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # the writer pads a block's tail that cannot hold a header
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        if kind == 0 and length == 0:  # zero padding at the end of the file
            break
        payload = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == FULL:
            pending = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            pending += payload
        else:
            raise AssertionError(f"{path}: unknown chunk type {kind} at byte {pos}")
        record = pb.Record()
        record.ParseFromString(pending)
        records.append(record)
        pending = b""
    return records


def _items(items: Any) -> dict[str, Any]:
    """Config/summary/history items: dotted `nested_key` paths or `key`, each with a JSON value."""
    out: dict[str, Any] = {}
    for item in items:
        key = ".".join(item.nested_key) if item.nested_key else item.key
        out[key] = json.loads(item.value_json)
    return out


@dataclass
class OfflineRun:
    """What one offline run directory holds, decoded."""

    dir: Path
    run: pb.RunRecord
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.run.run_id

    @property
    def steps(self) -> list[int]:
        return [row["_step"] for row in self.history]


def _finished_records(run_dir: Path, timeout_s: float) -> list[pb.Record]:
    """The run's records once its `exit` record is on disk.

    `run.finish()` can return before wandb-core has flushed the file (seen with 0.31 offline), so
    a reader right after it may see only the header: wait for the record that closes the run.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        paths = list(Path(run_dir).glob("run-*.wandb"))
        records = read_records(paths[0]) if len(paths) == 1 else []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{run_dir}: no finished run-*.wandb file after {timeout_s}s")
        time.sleep(0.1)


def read_offline_run(run_dir: Path, timeout_s: float = 30) -> OfflineRun:
    records = _finished_records(Path(run_dir), timeout_s)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    out = OfflineRun(Path(run_dir), run, config=_items(run.config.update))
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "config":
            out.config.update(_items(r.config.update))
        elif kind == "history":
            out.history.append(_items(r.history.item))
        elif kind == "summary":
            out.summary.update(_items(r.summary.update))
    return out


def offline_runs(wandb_parent: Path) -> list[OfflineRun]:
    """Every offline run under `<wandb_parent>/wandb/`, oldest first."""
    return [read_offline_run(d) for d in sorted((Path(wandb_parent) / "wandb").glob("offline-run-*"))]
