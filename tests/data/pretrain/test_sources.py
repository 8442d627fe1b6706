from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmtrain.config import DataConfig
from llmtrain.data.errors import DataError
from llmtrain.data.pretrain.sources import iter_documents, source_fingerprint


def docs(path: Path | str, **cfg: object) -> list:
    return list(iter_documents(DataConfig(path=str(path), **{"format": "auto", **cfg})))


def test_missing_data_path_raises_naming_the_key(tmp_path):
    with pytest.raises(DataError, match=r"data\.path=.*missing\.jsonl.* does not exist"):
        docs(tmp_path / "missing.jsonl")


def test_empty_file_raises_naming_it(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match=r"empty\.txt is empty"):
        docs(tmp_path / "empty.txt")


def test_jsonl_line_that_is_not_json_raises_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "three"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:4: not valid JSON"):
        docs(path)


def test_jsonl_missing_text_field_raises_with_line_and_keys_present(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "x", "id": 2}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl:2: no field 'text' \(keys present: body, id\)"):
        docs(path)


def test_jsonl_non_string_text_field_raises(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": ["a", "b"]}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl:1: field 'text' is list, expected a string"):
        docs(path)


def test_non_utf8_raises_with_file_line_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"first line\nsecond caf" + "é\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt:2: not valid UTF-8 at byte offset 21"):
        docs(path)


def test_text_paragraphs_are_blank_line_separated_with_their_first_line(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\ntwo\n\n\nthree\n   \nfour\n")
    got = [(d.text, d.index) for d in docs(path, text_split="paragraph")]
    assert got == [("one\ntwo", 1), ("three", 5), ("four", 7)]


def test_text_line_and_file_splits(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\n\ntwo\n")
    assert [d.text for d in docs(path, text_split="line")] == ["one", "", "two"]
    assert [d.text for d in docs(path, text_split="file")] == ["one\n\ntwo"]


def test_directory_reads_files_sorted_skipping_hidden_and_glob_matches(tmp_path):
    tmp_path = tmp_path / ".inside_a_hidden_parent"
    (tmp_path / "d").mkdir(parents=True)
    (tmp_path / "d" / "b.jsonl").write_text('{"text": "from b"}\n')
    (tmp_path / "d" / "a.txt").write_text("from a\n")
    (tmp_path / "d" / ".hidden.txt").write_text("editor swap file\n")
    assert [d.text for d in docs(tmp_path / "d")] == ["from a", "from b"]
    assert [d.text for d in docs(tmp_path / "d" / "*.jsonl")] == ["from b"]
    with pytest.raises(DataError, match="matches no files"):
        docs(tmp_path / "d" / "*.parquet")


def test_unknown_extension_with_auto_format_raises(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"cannot tell the format of .*data\.csv"):
        docs(tmp_path / "data.csv")


def test_json_array_file_is_read_as_rows(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"text": "a"}, {"text": "b"}]))
    assert [d.text for d in docs(path)] == ["a", "b"]


def test_parquet_column_is_read_in_order_and_missing_column_named(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"content": ["row"] * 3, "n": [1, 2, 3]}), path)
    with pytest.raises(DataError, match=r"rows\.parquet: no column 'text' \(columns: content, n\)"):
        docs(path)
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(2500)]}), path)
    got = docs(path)
    assert [d.text for d in got] == [f"row {i}" for i in range(2500)]  # spans several read batches


def test_hf_dataset_saved_to_disk_is_read(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["x", "y", "z"]}).save_to_disk(str(tmp_path / "ds"))
    assert [d.text for d in docs(tmp_path / "ds")] == ["x", "y", "z"]
    assert [d.text for d in docs(f"hf:{tmp_path / 'ds'}", format="hf")] == ["x", "y", "z"]


def test_synthetic_format_yields_the_configured_number_of_documents():
    got = list(iter_documents(DataConfig(format="synthetic", synthetic_docs=7)))
    assert len(got) == 7 and got[0].origin == "synthetic:0"


def test_source_fingerprint_hashes_every_file(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "b.txt").write_text("beta\n")
    fp = source_fingerprint(DataConfig(path=str(tmp_path), format="auto"))
    assert [Path(f["path"]).name for f in fp["files"]] == ["a.txt", "b.txt"]
    assert fp["files"][0]["sha256"] == hashlib.sha256(b"alpha\n").hexdigest()
    assert fp["files"][1]["size"] == 5
