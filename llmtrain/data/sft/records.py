"""Raw SFT rows (one JSON object per example) from json / jsonl / parquet files or `hf:NAME`.

Unlike pretraining documents, an SFT example is a whole structured row, so rows are returned as
dicts for `llmtrain.data.sft.formats` to interpret. Text that is not valid UTF-8 does not stop the read:
bytes are decoded with `surrogateescape`, and `formats` reports the example and field that hold
them, so one bad row is skipped (or reported) like any other malformed example.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llmtrain.config import DataConfig
from llmtrain.data.errors import DataError
from llmtrain.data.pretrain.sources import HF_PREFIX, file_sha256, resolve_files

RECORD_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Record:
    row: Any
    # File path or `hf:NAME[split]`.
    source: str
    # 0-based example index within `source` (for jsonl, blank lines are not counted).
    index: int
    # 1-based line for jsonl rows, else None.
    line: int | None = None

    @property
    def where(self) -> str:
        """How error messages name this example: file, example index (and line)."""
        line = f" (line {self.line})" if self.line is not None else ""
        return f"{self.source} example {self.index}{line}"


def record_files(cfg: DataConfig) -> list[Path]:
    """The data files behind `data.path` (sorted), or [] for `hf:` sources."""
    assert cfg.path is not None
    if cfg.path.startswith(HF_PREFIX):
        return []
    files = [path for path, _ in _resolve(cfg)]
    bad = [f for f in files if f.suffix.lower() not in RECORD_SUFFIXES]
    if bad:
        raise DataError(
            f"data.path={cfg.path!r}: {bad[0]} is not a .json, .jsonl or .parquet file; SFT data must be "
            "one of those (or hf:NAME)"
        )
    return files


def _resolve(cfg: DataConfig) -> list[tuple[Path, str]]:
    # resolve_files maps extensions only for data.format=auto; SFT formats (data.sft.format)
    # describe rows, not files.
    return resolve_files(replace(cfg, format="auto"))


def iter_records(cfg: DataConfig) -> Iterator[Record]:
    """Every row of the configured SFT source, files in sorted order."""
    assert cfg.path is not None
    if cfg.path.startswith(HF_PREFIX):
        yield from _read_hf(cfg.path.removeprefix(HF_PREFIX), cfg.hf_split)
        return
    for path in record_files(cfg):
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            yield from _read_parquet(path)
        elif suffix == ".json" and _starts_with_array(path):
            yield from _read_json_array(path)
        else:
            yield from _read_jsonl(path)


def source_fingerprint(cfg: DataConfig) -> list[dict[str, Any]]:
    """Content hashes of the data files (or the hf name and split): the cache key's data part."""
    assert cfg.path is not None
    if cfg.path.startswith(HF_PREFIX):
        return [{"hf": cfg.path, "split": cfg.hf_split}]
    out = []
    for path in record_files(cfg):
        out.append({"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)})
    return out


def _starts_with_array(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(256).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def _read_json_array(path: Path) -> Iterator[Record]:
    # surrogateescape keeps undecodable bytes as lone surrogates for formats.py to report per field.
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON array of examples, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        yield Record(row, str(path), i)


def _read_jsonl(path: Path) -> Iterator[Record]:
    index = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.decode("utf-8", errors="surrogateescape").strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); jsonl holds one "
                    "JSON object per line"
                ) from exc
            yield Record(row, str(path), index, line=number)
            index += 1


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError subclasses with useful text
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    index = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield Record(row, str(path), index)
            index += 1


def _read_hf(name: str, split: str) -> Iterator[Record]:
    import datasets

    source = f"hf:{name}[{split}]"
    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many types; the message is what the user needs
        raise DataError(
            f"{source}: cannot load the dataset ({exc}); check data.path and data.hf_split"
        ) from exc
    for i, row in enumerate(ds):
        yield Record(row, source, i)
