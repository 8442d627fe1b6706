"""Labelled rows (text, optional text pair, label) from CSV, JSON, JSONL or parquet files.

Each reader is the format's own library (the `csv` module in strict mode, `json`, pyarrow), and
every row keeps where it came from (file and 1-based line, or row index for parquet), so an error
about a row names it: a missing label column, an empty text, a broken CSV quote.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtrain.data.errors import DataError

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class LabelledRow:
    text: str
    text_pair: str | None
    label: str  # the label as written (ints become their decimal string), mapped to an id later
    where: str  # "file line N" or "file row N": how errors and predictions name the row


@dataclass(frozen=True)
class Fields:
    text: str
    label: str
    text_pair: str | None = None


class EmptyText(DataError):
    """A row whose text is empty (skipped, and reported, under `data.on_empty_text=skip`)."""


def read_rows(path: Path, fields: Fields, skipped: list[str] | None = None) -> list[LabelledRow]:
    """Every row of one file, checked: the fields exist, texts are non-empty, labels are set.

    With a `skipped` list, rows with an empty text are left out and named in it instead of
    stopping the read (`data.on_empty_text=skip`); every other problem is still an error.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist (relative to the working directory {Path.cwd()})")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: classification data must be one of {', '.join(SUFFIXES)} files")
    if suffix in (".csv", ".tsv"):
        raw = _read_csv(path, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        raw = _read_parquet(path)
    else:
        raw = _read_json(path)
    rows = []
    for row, where in raw:
        try:
            rows.append(_labelled(row, where, fields, path))
        except EmptyText as exc:
            if skipped is None:
                raise
            skipped.append(str(exc))
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows


def _labelled(row: Any, where: str, fields: Fields, path: Path) -> LabelledRow:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with fields, got {type(row).__name__}")
    for key, name in (("data.text_field", fields.text), ("data.label_field", fields.label)):
        if name not in row:
            raise DataError(
                f"{where}: no field {name!r} ({key}); the row has {', '.join(map(repr, row))}. "
                f"Set {key} to the column that holds it"
            )
    label = row[fields.label]
    if label is None or (isinstance(label, str) and not label.strip()):
        raise DataError(f"{where}: empty label in field {fields.label!r} (data.label_field)")
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    text = _text(row, fields.text, "data.text_field", where)
    pair = _text(row, fields.text_pair, "data.text_pair_field", where) if fields.text_pair else None
    return LabelledRow(text, pair, str(label).strip(), where)


def _text(row: dict, name: str, key: str, where: str) -> str:
    if name not in row:
        raise DataError(f"{where}: no field {name!r} ({key}); the row has {', '.join(map(repr, row))}")
    value = row[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} ({key}) is {type(value).__name__}, expected text")
    if not value.strip():
        raise EmptyText(
            f"{where}: field {name!r} ({key}) is empty; remove the row, fill in its text, or set "
            "data.on_empty_text=skip"
        )
    return value


def _read_csv(path: Path, delimiter: str) -> Iterator[tuple[dict, str]]:
    """Rows as dicts keyed by the header. `strict=True` turns a stray or unclosed quote into an
    error instead of silently merging the following lines into one field."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{path} line 1: malformed CSV header ({exc})") from exc
        start = reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(
                    f"{path} line {start}: malformed CSV ({exc}; a quote opened at or after this line is "
                    f"not closed, or text follows a closing quote, error found at line {reader.line_num}). "
                    'Quote fields that contain the delimiter, and double quotes inside them ("")'
                ) from exc
            where = f"{path} line {start}"
            if values and len(values) != len(header):
                raise DataError(
                    f"{where}: {len(values)} fields, the header has {len(header)} ({', '.join(header)}); "
                    "quote fields that contain the delimiter"
                )
            if values:
                yield dict(zip(header, values)), where
            start = reader.line_num + 1


def _read_json(path: Path) -> Iterator[tuple[Any, str]]:
    """A JSON array of objects, or JSON Lines (one object per line)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg})") from exc
        for i, row in enumerate(rows):
            yield row, f"{path} row {i}"
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line), f"{path} line {lineno}"
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {lineno}: invalid JSON ({exc.msg})") from exc


def _read_parquet(path: Path) -> Iterator[tuple[dict, str]]:
    import pyarrow.parquet as pq

    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield row, f"{path} row {i}"
