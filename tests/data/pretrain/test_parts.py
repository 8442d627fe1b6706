"""Preparation in parts (`--part i --parts n`) and their merge: the merged folder holds the same
shards, byte for byte, as one process preparing the same files; finished parts are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import llmtrain.data.pretrain.parts as parts_module
from llmtrain.config import DataConfig
from llmtrain.data.errors import DataError
from llmtrain.data.pretrain.parts import merge_parts, part_dir, part_files, prepare_part
from llmtrain.data.pretrain.prepare import prepare_shards
from llmtrain.data.shards import TokenShards


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """7 jsonl files of unequal size, with empty documents (one at a file's start) among them."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for f in range(7):
        rows = [
            "" if (f == 2 and i in (0, 3)) else f"file {f} doc {i} " * int(rng.integers(1, 30))
            for i in range(5 + 4 * f)
        ]
        (folder / f"c{f}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    return folder


def _cfg(corpus: Path) -> DataConfig:
    # Small shards so the writer starts new files inside the stream; a high val share so both splits fill.
    return DataConfig(
        name="c", path=str(corpus), format="jsonl", tokenizer="byte", shard_tokens=400, val_fraction=0.2
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "parts" not in p.parts and p.suffix != ".json"
    }


def test_merged_parts_equal_one_process_preparation_byte_for_byte(corpus, tmp_path, monkeypatch):
    cfg = _cfg(corpus)
    one = prepare_shards(cfg, tmp_path / "one", workers=1, progress=False)
    loads = []
    real_load = parts_module.load_tokenizer
    monkeypatch.setattr(parts_module, "load_tokenizer", lambda spec: loads.append(spec) or real_load(spec))
    out = tmp_path / "merged"
    for part in (2, 0, 3, 1):  # any order, as array tasks finish
        prepare_part(cfg, out, part, 4, workers=1)
    assert loads == ["byte"] * 4, "the tokenizer is loaded once per part, not per file"
    merge_parts(cfg, out, 4)
    assert len(_files(one)) > 4 and _files(out) == _files(one)
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (one, out))
    assert a["splits"] == b["splits"] and a["empty_docs"] == b["empty_docs"] and a["sources"] == b["sources"]
    for split in ("train", "val"):
        x, y = TokenShards(one, split), TokenShards(out, split)
        assert np.array_equal(x.read(0, x.num_tokens), y.read(0, y.num_tokens))
        assert np.array_equal(x.doc_ends, y.doc_ends)


def test_parts_cover_the_files_once_in_order_even_with_more_parts_than_files(corpus):
    cfg = _cfg(corpus)
    for n in (1, 3, 7, 10):
        chunks = [part_files(cfg, k, n) for k in range(n)]
        assert [p for c in chunks for p, _ in c] == sorted(corpus.glob("*.jsonl"))
    sizes = [sum(p.stat().st_size for p, _ in part_files(cfg, k, 3)) for k in range(3)]
    assert max(sizes) < 0.6 * sum(sizes), f"parts split by bytes: {sizes}"


def test_rerun_skips_finished_parts_and_merge_needs_every_part(corpus, tmp_path):
    cfg = _cfg(corpus)
    out = tmp_path / "out"
    prepare_part(cfg, out, 0, 3, workers=1)
    stamp = (part_dir(out, 0, 3) / "manifest.json").stat().st_mtime_ns
    prepare_part(cfg, out, 0, 3, workers=1)
    assert (part_dir(out, 0, 3) / "manifest.json").stat().st_mtime_ns == stamp, "finished part kept"
    with pytest.raises(DataError, match="2 of 3 parts are not finished"):
        merge_parts(cfg, out, 3)
    assert not (out / "manifest.json").exists()
    # A part made from other files is refused, not silently merged.
    (corpus / "c0.jsonl").write_text(json.dumps({"text": "changed"}) + "\n")
    with pytest.raises(DataError, match="prepared from other files"):
        prepare_part(cfg, out, 0, 3, workers=1)


def test_part_of_a_mixture_or_out_of_range_is_an_error(corpus):
    with pytest.raises(DataError, match="--part 3 --parts 3"):
        part_files(_cfg(corpus), 3, 3)
    with pytest.raises(DataError, match="one pretraining corpus"):
        part_files(DataConfig(), 0, 2)
