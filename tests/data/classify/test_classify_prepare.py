"""Classification data: rows from CSV/JSON/JSONL/parquet, a seeded stratified split, the label
set, and a clear error (file, line, field) for every kind of bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from llmtrain.config import ConfigError, DataConfig
from llmtrain.data import class_weights, classify_labels, ensure_prepared, samples
from llmtrain.data.classify.dataset import ClassifyExamples
from llmtrain.data.errors import DataError


def _csv(path: Path, rows: list[tuple[str, str]], header: str = "label,review") -> Path:
    path.write_text(header + "\n" + "".join(f'{label},"{text}"\n' for label, text in rows), encoding="utf-8")
    return path


def _cfg(tmp_path: Path, path: Path, **extra: object) -> DataConfig:
    settings = {
        "name": "t",
        "kind": "classify",
        "path": str(path),
        "format": "csv",
        "text_field": "review",
        "label_field": "label",
        "tokenizer": "byte",
        "seq_len": 64,
        "val_fraction": 0.2,
        "test_fraction": 0.1,
        "cache_dir": str(tmp_path / "cache"),
        **extra,
    }
    return DataConfig(**settings)


def _balanced_rows(n: int = 100) -> list[tuple[str, str]]:
    # 70% label 1, 30% label 0, as in ChnSentiCorp.
    return [
        ("1" if i % 10 < 7 else "0", f"评论 {i}, 很好" if i % 10 < 7 else f"评论 {i}, 很差") for i in range(n)
    ]


def test_stratified_split_keeps_each_class_share_records_sizes_and_is_seeded(tmp_path):
    cfg = _cfg(tmp_path, _csv(tmp_path / "d.csv", _balanced_rows(200)))
    folder = ensure_prepared(cfg)
    manifest = json.loads((folder / "manifest.json").read_text())
    sizes = {s: manifest["splits"][s]["num_docs"] for s in ("train", "val", "test")}
    assert sizes == {"train": 140, "val": 40, "test": 20}
    for split, n in sizes.items():
        counts = manifest["splits"][split]["class_counts"]
        assert counts["1"] == round(0.7 * n) and counts["0"] == round(0.3 * n), (split, counts)
    assert classify_labels(cfg, folder) == ["0", "1"]
    # Same seed, another cache: the same val rows; another seed moves them.
    again = ensure_prepared(_cfg(tmp_path, cfg.path, cache_dir=str(tmp_path / "c2")))
    other = ensure_prepared(_cfg(tmp_path, cfg.path, cache_dir=str(tmp_path / "c3"), split_seed=1))
    val = [r["where"] for r in ClassifyExamples(folder, "val").rows()]
    assert val == [r["where"] for r in ClassifyExamples(again, "val").rows()]
    assert val != [r["where"] for r in ClassifyExamples(other, "val").rows()]


def test_examples_end_with_eos_pad_with_pad_id_and_carry_class_ids(tmp_path):
    cfg = _cfg(tmp_path, _csv(tmp_path / "d.csv", _balanced_rows(50)))
    folder = ensure_prepared(cfg)
    dataset, collate_fn = samples(cfg, folder, "train")
    batch = collate_fn([dataset[0], dataset[1], dataset[2]])
    pad, eos = dataset.pad_id, 258  # byte tokenizer: <pad>=256, <s>=257, </s>=258
    assert batch["labels"].shape == (3,)
    assert batch["labels"].tolist() == [int(x) for x in dataset.labels[:3]]
    for row, doc in zip(batch["input_ids"], batch["document_ids"]):
        real = int((doc >= 0).sum())
        assert row[real - 1] == eos and (row[real:] == pad).all()
    rows = dataset.rows()
    text = bytes(dataset.ids(0)[1:-1].tolist()).decode("utf-8")
    assert text == rows[0]["text"] and rows[0]["label"] == dataset.label_names[int(dataset.labels[0])]


def test_jsonl_json_and_parquet_read_like_csv_with_int_and_string_labels(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"sentence": f"text {i}", "topic": ["b", "a", "c"][i % 3]} for i in range(60)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.json", "d.parquet"):
        cfg = _cfg(tmp_path, tmp_path / name, format="auto", text_field="sentence", label_field="topic",
                   cache_dir=str(tmp_path / f"c_{name}"))  # fmt: skip
        assert classify_labels(cfg, ensure_prepared(cfg)) == ["a", "b", "c"]
    ints = [{"t": f"x {i}", "y": i % 11} for i in range(110)]
    (tmp_path / "i.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ints))
    cfg = _cfg(
        tmp_path, tmp_path / "i.jsonl", format="auto", text_field="t", label_field="y", test_fraction=0.0
    )
    assert classify_labels(cfg, ensure_prepared(cfg)) == [str(i) for i in range(11)]  # numeric order


def test_class_weights_auto_are_sklearn_balanced_and_a_list_must_match_the_classes(tmp_path):
    from sklearn.utils.class_weight import compute_class_weight

    cfg = _cfg(tmp_path, _csv(tmp_path / "d.csv", _balanced_rows(200)), class_weights="auto")
    folder = ensure_prepared(cfg)
    train = ClassifyExamples(folder, "train").labels
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=train)
    assert class_weights(cfg, folder) == pytest.approx(expected.tolist())
    assert class_weights(_cfg(tmp_path, cfg.path, class_weights=[1, 3]), folder) == [1.0, 3.0]
    with pytest.raises(DataError, match="3 weights but the training set has 2 classes"):
        class_weights(_cfg(tmp_path, cfg.path, class_weights=[1, 2, 3]), folder)
    with pytest.raises(ConfigError, match="data.class_weights"):
        _cfg(tmp_path, cfg.path, class_weights="balanced")


def test_missing_label_column_names_file_line_and_field(tmp_path):
    path = _csv(tmp_path / "d.csv", _balanced_rows(20), header="cat,review")
    with pytest.raises(DataError, match=r"d\.csv line 2: no field 'label' \(data\.label_field\)"):
        ensure_prepared(_cfg(tmp_path, path))


def test_empty_text_names_file_line_and_field_or_is_skipped_and_recorded(tmp_path):
    rows = _balanced_rows(20)
    rows[5] = ("1", "  ")
    path = _csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=r"d\.csv line 7: field 'review' \(data\.text_field\) is empty"):
        ensure_prepared(_cfg(tmp_path, path))
    folder = ensure_prepared(_cfg(tmp_path, path, on_empty_text="skip"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [s.split(":")[0] for s in manifest["skipped_empty_text"]] == [f"{path} line 7"]
    assert sum(manifest["splits"][s]["num_docs"] for s in ("train", "val", "test")) == 19


def test_validation_label_unseen_in_training_names_file_line_and_label(tmp_path):
    train = _csv(tmp_path / "train.csv", _balanced_rows(40))
    val = _csv(tmp_path / "val.csv", [("1", "ok"), ("0", "bad"), ("2", "meh")])
    cfg = _cfg(tmp_path, train, val_path=str(val), test_fraction=0.0)
    with pytest.raises(
        DataError, match=r"val\.csv line 4: val label '2' .* does not occur in the training set"
    ):
        ensure_prepared(cfg)


def test_single_class_training_set_is_an_error_naming_file_class_and_field(tmp_path):
    path = _csv(tmp_path / "d.csv", [("1", f"text {i}") for i in range(20)])
    with pytest.raises(
        DataError, match=r"d\.csv: the training set has a single class \('1' in field 'label'"
    ):
        ensure_prepared(_cfg(tmp_path, path, val_fraction=0.0, test_fraction=0.0))


def test_csv_with_a_broken_quote_names_the_line_where_the_quote_opened(tmp_path):
    path = _csv(tmp_path / "d.csv", _balanced_rows(20))
    lines = path.read_text().splitlines(keepends=True)
    lines[8] = '1,"an unclosed quote, and more text\n'  # line 9 of the file
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=r"d\.csv line 9: malformed CSV"):
        ensure_prepared(_cfg(tmp_path, path))
    lines[8] = '1,"closed" then text\n'
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=r"d\.csv line 9: malformed CSV"):
        ensure_prepared(_cfg(tmp_path, path))


def test_a_class_with_one_example_cannot_be_stratified_and_says_which(tmp_path):
    rows = _balanced_rows(40) + [("7", "lonely")]
    with pytest.raises(DataError, match=r"label '7' has a single example \(.*d\.csv line 42\)"):
        ensure_prepared(_cfg(tmp_path, _csv(tmp_path / "d.csv", rows)))


def test_shared_csvs_parse_with_their_label_columns():
    """The two shared data sets read in full with the data configs' fields (no split, no tokens)."""
    from llmtrain.data.classify.records import Fields, read_rows

    shared = Path(__file__).resolve().parents[3].parent / "shared" / "data"
    if not (shared / "chnsenticorp_htl.csv").is_file():
        pytest.skip("shared data not present")
    skipped: list[str] = []
    hotel = read_rows(shared / "chnsenticorp_htl.csv", Fields("review", "label"), skipped)
    assert len(skipped) == 1 and "line 6376" in skipped[0]  # the one empty review
    assert len(hotel) > 7000 and 0.65 < Counter(r.label for r in hotel)["1"] / len(hotel) < 0.72
    shop = read_rows(shared / "online_shopping_10_cats_3k.csv", Fields("review", "cat"))
    assert len({r.label for r in shop}) == 10
