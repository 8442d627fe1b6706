"""Raw documents from `data.path`, one at a time, each with the place it came from.

Readers stream (a line, a paragraph or a parquet batch at a time) so preparing a corpus never holds
it in memory, and every malformed input is reported with its file and line or row, since that is
what a person needs to fix it.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtrain.config import DataConfig
from llmtrain.data.errors import DataError
from llmtrain.data.pretrain.synthetic import GENERATOR_VERSION, generate_documents

HF_PREFIX = "hf:"
# The synthetic corpus is fixed: its size is configurable, its content is not.
SYNTHETIC_SEED = 0
EXTENSION_FORMATS = {
    ".txt": "text",
    ".md": "text",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}
_PARQUET_BATCH_ROWS = 1024
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Document:
    text: str
    # Where the text came from, for error messages: a file path, `hf:NAME[split]` or `synthetic`.
    source: str
    # 1-based line (text, jsonl) or 0-based row (parquet, hf, synthetic) within `source`.
    index: int

    @property
    def origin(self) -> str:
        return f"{self.source}:{self.index}"


def iter_documents(cfg: DataConfig) -> Iterator[Document]:
    """Every document of the configured source, in a fixed order (files sorted by path)."""
    if cfg.format == "synthetic":
        for i, text in enumerate(generate_documents(cfg.synthetic_docs, SYNTHETIC_SEED)):
            yield Document(text, "synthetic", i)
        return
    assert cfg.path is not None  # DataConfig requires a path for every other format
    if cfg.format == "hf" or (cfg.format == "auto" and _is_hf(cfg.path)):
        yield from _read_hf(cfg)
        return
    for path, fmt in resolve_files(cfg):
        yield from iter_file_documents(path, fmt, cfg.text_field, cfg.text_split)


def iter_file_documents(path: Path, fmt: str, text_field: str, text_split: str) -> Iterator[Document]:
    """The documents of one file in format `text`, `jsonl` or `parquet`."""
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty; remove it from data.path or give it content")
    readers = {"text": lambda: _read_text(path, text_split), "jsonl": lambda: _read_jsonl(path, text_field)}
    readers["parquet"] = lambda: _read_parquet(path, text_field)
    count = 0
    for doc in readers[fmt]():
        count += 1
        yield doc
    if count == 0:
        raise DataError(f"{path} holds no documents (only blank lines); remove it from data.path or fix it")


def resolve_files(cfg: DataConfig) -> list[tuple[Path, str]]:
    """(file, format) for every file `data.path` names: a file, a directory (recursively) or a glob."""
    assert cfg.path is not None
    raw = cfg.path
    path = Path(raw).expanduser()
    if any(ch in raw for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"data.path={raw!r} matches no files (relative to {Path.cwd()})")
    elif path.is_dir():
        # Hidden files and folders inside the directory (.git, editor swap files) are not data.
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"data.path={raw!r} is a directory with no files in it")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(
            f"data.path={raw!r} does not exist (resolved to {path.resolve()}, relative to the working "
            f"directory {Path.cwd()}); give a file, a directory, a glob or hf:NAME"
        )
    return [(f, _format_of(f, cfg.format)) for f in files]


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    found = EXTENSION_FORMATS.get(path.suffix.lower())
    if found is None:
        known = ", ".join(EXTENSION_FORMATS)
        raise DataError(
            f"cannot tell the format of {path} from its extension (known: {known}); set data.format "
            "(text, jsonl, parquet) or remove the file from data.path"
        )
    return found


def _is_hf(path: str) -> bool:
    if path.startswith(HF_PREFIX):
        return True
    # A folder written by `datasets`' save_to_disk (a Dataset or a DatasetDict).
    p = Path(path)
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its line ending), decoding UTF-8 strictly line by line."""
    offset = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: not valid UTF-8 at byte offset {offset + exc.start} of the file "
                    f"({exc.reason}); convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
                ) from exc
            offset += len(raw)
            yield number, line.rstrip("\r\n")


def _read_text(path: Path, text_split: str) -> Iterator[Document]:
    if text_split == "line":
        for number, line in _read_lines(path):
            yield Document(line, str(path), number)
        return
    if text_split == "file":
        lines = [line for _, line in _read_lines(path)]
        yield Document("\n".join(lines), str(path), 1)
        return
    # paragraph: runs of non-blank lines separated by one or more blank lines.
    para: list[str] = []
    start = 0
    for number, line in _read_lines(path):
        if line.strip():
            if not para:
                start = number
            para.append(line)
        elif para:
            yield Document("\n".join(para), str(path), start)
            para = []
    if para:
        yield Document("\n".join(para), str(path), start)


def _read_jsonl(path: Path, text_field: str) -> Iterator[Document]:
    with path.open("rb") as f:
        first = f.read(64).lstrip()
    if path.suffix.lower() == ".json" and first.startswith(b"["):
        yield from _read_json_array(path, text_field)
        return
    for number, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                "jsonl holds one JSON object per line"
            ) from exc
        yield Document(_text_of(row, text_field, f"{path}:{number}"), str(path), number)


def _read_json_array(path: Path, text_field: str) -> Iterator[Document]:
    # A .json file holding one array of objects must be parsed whole; jsonl is the streaming format.
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a valid UTF-8 JSON array ({exc})") from exc
    for i, row in enumerate(rows):
        yield Document(_text_of(row, text_field, f"{path}[{i}]"), str(path), i)


def _text_of(row: Any, text_field: str, where: str) -> str:
    if not isinstance(row, dict):
        raise DataError(
            f"{where}: expected a JSON object with a {text_field!r} field, got {type(row).__name__}"
        )
    if text_field not in row:
        raise DataError(
            f"{where}: no field {text_field!r} (keys present: {', '.join(map(str, row)) or 'none'}); "
            "set data.text_field to the field that holds the text"
        )
    text = row[text_field]
    if not isinstance(text, str):
        raise DataError(
            f"{where}: field {text_field!r} is {type(text).__name__}, expected a string; "
            "set data.text_field to a text field"
        )
    return text


def _read_parquet(path: Path, text_field: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError subclasses with useful text
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    columns = pf.schema_arrow.names
    if text_field not in columns:
        raise DataError(
            f"{path}: no column {text_field!r} (columns: {', '.join(columns)}); "
            "set data.text_field to the column that holds the text"
        )
    row = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if not isinstance(text, str):
                raise DataError(
                    f"{path}: row {row}, column {text_field!r} is {type(text).__name__}, expected a string"
                )
            yield Document(text, str(path), row)
            row += 1


def _read_hf(cfg: DataConfig) -> Iterator[Document]:
    import datasets

    assert cfg.path is not None
    name = cfg.path.removeprefix(HF_PREFIX)
    source = f"hf:{name}[{cfg.hf_split}]"
    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                if cfg.hf_split not in ds:
                    raise DataError(
                        f"{name}: no split {cfg.hf_split!r} (splits: {', '.join(ds)}); set data.hf_split"
                    )
                ds = ds[cfg.hf_split]
        else:
            ds = datasets.load_dataset(name, split=cfg.hf_split, streaming=True)
    except DataError:
        raise
    except Exception as exc:  # offline, unknown name, bad split: datasets raises many types
        raise DataError(
            f"could not open Hugging Face dataset {name!r} split {cfg.hf_split!r}: {exc}. Offline? Save it "
            "with `save_to_disk` on a machine with access and point data.path at that folder"
        ) from exc
    for i, row in enumerate(ds):
        yield Document(_text_of(row, cfg.text_field, f"{source} row {i}"), source, i)


def source_fingerprint(cfg: DataConfig) -> dict[str, Any]:
    """What the shards were made from: per file its path, size and sha256.

    Hashing reads every byte once; for corpora where that is too slow on each start, prepare once
    with `launch/prepare_data.py` and point data.shards_dir at the result.
    """
    if cfg.format == "synthetic":
        return {
            "synthetic": {
                "num_docs": cfg.synthetic_docs,
                "seed": SYNTHETIC_SEED,
                "version": GENERATOR_VERSION,
            }
        }
    assert cfg.path is not None
    if cfg.format == "hf" or (cfg.format == "auto" and _is_hf(cfg.path)):
        name = cfg.path.removeprefix(HF_PREFIX)
        if not Path(name).is_dir():
            # A hub dataset cannot be hashed without downloading it; its name and split stand in.
            return {"hf": {"name": name, "split": cfg.hf_split}}
        files = [p for p in sorted(Path(name).rglob("*")) if p.is_file()]
        return {"hf": {"split": cfg.hf_split}, "files": [_file_fingerprint(p) for p in files]}
    return {"files": [_file_fingerprint(p) for p, _ in resolve_files(cfg)]}


def file_sha256(path: Path) -> str:
    """Content hash, read in chunks so a large corpus file never sits in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _file_fingerprint(path: Path) -> dict[str, Any]:
    return {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": file_sha256(path)}
