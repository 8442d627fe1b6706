from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import llmtrain.data.pretrain.encode as encode
from llmtrain.config import DataConfig
from llmtrain.data.cache import check_manifest, shard_dtype
from llmtrain.data.errors import DataError
from llmtrain.data.pretrain.prepare import ensure_shards, prepare_shards
from llmtrain.data.shards import TokenShards
from llmtrain.data.tokenizer.load import load_tokenizer

REPO = Path(__file__).resolve().parents[3]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def manifest(shards: Path) -> dict:
    return json.loads((shards / "manifest.json").read_text())


def split_docs(shards: Path, split: str) -> list[bytes]:
    """Each document's bytes (byte tokenizer), without its EOS."""
    s = TokenShards(shards, split)
    stream, starts = s.read(0, s.num_tokens), [0, *s.doc_ends[:-1].tolist()]
    return [bytes(stream[a : b - 1].astype(np.uint8)) for a, b in zip(starts, s.doc_ends.tolist())]


def test_tinyshakespeare_paragraphs_and_tokens_match_sentencepiece(shared_data, tmp_path):
    model = shared_data / "llama2_tokenizer.model"
    cfg = DataConfig(path=str(shared_data / "tinyshakespeare.txt"), format="text", tokenizer=str(model))
    m = manifest(prepare_shards(cfg, tmp_path / "shards", workers=1, progress=False))
    paragraphs = [
        p.strip("\n") for p in (shared_data / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()
    ]
    expected_tokens = sum(
        len(ids) + 1 for ids in spm.SentencePieceProcessor(model_file=str(model)).encode(paragraphs)
    )
    train, val = m["splits"]["train"], m["splits"]["val"]
    assert train["num_docs"] + val["num_docs"] == len(paragraphs) == 7222
    assert train["num_tokens"] + val["num_tokens"] == expected_tokens
    assert 0.01 < val["num_docs"] / len(paragraphs) < 0.03  # val_fraction=0.02
    assert m["dtype"] == "uint16" and m["tokenizer"]["vocab_size"] == 32000
    assert m["empty_docs"]["count"] == 0


def test_c4_demo_has_one_document_per_line(shared_data, tmp_path):
    cfg = DataConfig(
        path=str(shared_data / "c4_demo.jsonl"),
        format="auto",
        tokenizer=str(shared_data / "llama2_tokenizer.model"),
        val_fraction=0.05,
    )
    m = manifest(prepare_shards(cfg, tmp_path / "shards", workers=1, progress=False))
    lines = (shared_data / "c4_demo.jsonl").read_text().splitlines()
    assert m["splits"]["train"]["num_docs"] + m["splits"]["val"]["num_docs"] == len(lines) == 300
    assert 5 <= m["splits"]["val"]["num_docs"] <= 30
    assert m["splits"]["train"]["num_tokens"] > 100_000
    assert m["sources"]["files"][0]["size"] == (shared_data / "c4_demo.jsonl").stat().st_size


def test_every_document_ends_with_eos_and_has_no_bos(make_shards):
    shards = make_shards(["ab", "cde"], val_fraction=0.0)
    s = TokenShards(shards, "train")
    assert s.read(0, s.num_tokens).tolist() == [97, 98, 258, 99, 100, 101, 258]
    assert s.doc_ends.tolist() == [3, 7]


def test_empty_documents_are_counted_in_the_manifest_not_silently_dropped(make_shards, caplog):
    with caplog.at_level("WARNING", logger="llmtrain"):
        shards = make_shards(["real text", "", "more text", ""], val_fraction=0.0)
    m = manifest(shards)
    assert m["empty_docs"]["count"] == 2
    assert [Path(e).name for e in m["empty_docs"]["examples"]] == ["docs0.jsonl:2", "docs0.jsonl:4"]
    assert m["splits"]["train"]["num_docs"] == 2 and m["splits"]["train"]["empty_docs"] == 2
    assert "skipped 2 documents with no tokens" in caplog.text


def test_dtype_is_uint16_when_ids_fit_else_uint32():
    assert shard_dtype(259) == np.uint16
    assert shard_dtype(65536) == np.uint16  # ids 0..65535
    assert shard_dtype(65537) == np.uint32
    assert shard_dtype(128256) == np.uint32


def test_large_vocabulary_writes_uint32_shards_that_read_back(tmp_path):
    words = [f"w{i}" for i in range(66_000)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words + ["</s>"])}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>").save_pretrained(tmp_path / "tok")
    source = write_jsonl(tmp_path / "d.jsonl", ["w1 w65999 w65536", "w7"])
    cfg = DataConfig(path=str(source), format="jsonl", tokenizer=str(tmp_path / "tok"), val_fraction=0.0)
    shards = prepare_shards(cfg, tmp_path / "shards", workers=1, progress=False)
    assert manifest(shards)["dtype"] == "uint32"
    assert (shards / "train" / "shard_00000.bin").stat().st_size == 4 * 6
    assert TokenShards(shards, "train").read(0, 6).tolist() == [1, 65999, 65536, 66000, 7, 66000]


def test_train_and_val_are_disjoint_by_document_and_cover_the_corpus(make_shards):
    texts = [f"document number {i} " + "x" * (i % 13) for i in range(400)]
    shards = make_shards(texts, val_fraction=0.1)
    train, val = split_docs(shards, "train"), split_docs(shards, "val")
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == sorted(t.encode() for t in texts)
    assert 20 <= len(val) <= 60


def test_at_least_one_val_document_when_fraction_is_positive(make_shards):
    m = manifest(make_shards(["first", "second"], val_fraction=0.001))
    assert (m["splits"]["train"]["num_docs"], m["splits"]["val"]["num_docs"]) == (1, 1)


def test_small_shard_tokens_rolls_over_to_several_shards(make_shards):
    m = manifest(make_shards([f"doc {i} text" for i in range(50)], val_fraction=0.0, shard_tokens=40))
    shards = m["splits"]["train"]["shards"]
    assert len(shards) > 5
    assert all(s["num_tokens"] >= 40 for s in shards[:-1])
    assert sum(s["num_tokens"] for s in shards) == m["splits"]["train"]["num_tokens"]


def test_parallel_workers_write_byte_identical_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "_CHUNK_DOCS", 16)  # many chunks in flight, to exercise ordering
    cfg = DataConfig(format="synthetic", synthetic_docs=600, shard_tokens=50_000)
    one = prepare_shards(cfg, tmp_path / "one", workers=1, progress=False)
    two = prepare_shards(cfg, tmp_path / "two", workers=2, progress=False)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert len(files) > 4
    assert files == sorted(
        p.relative_to(two) for p in two.rglob("*") if p.is_file() and p.name != "manifest.json"
    )
    for f in files:
        assert (one / f).read_bytes() == (two / f).read_bytes(), f
    assert manifest(one)["splits"] == manifest(two)["splits"]


def test_failed_preparation_leaves_no_output_folder(tmp_path):
    source = tmp_path / "d.jsonl"
    source.write_text('{"text": "fine"}\n' * 3 + "not json\n")
    cfg = DataConfig(path=str(source), format="jsonl", tokenizer="byte")
    with pytest.raises(DataError, match=r"d\.jsonl:4"):
        prepare_shards(cfg, tmp_path / "out", workers=1, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["d.jsonl"]  # neither out/ nor a leftover temp folder


def test_existing_output_folder_is_refused(make_shards, tmp_path):
    (tmp_path / "taken").mkdir()
    cfg = DataConfig(format="synthetic", synthetic_docs=3)
    with pytest.raises(DataError, match="already exists"):
        prepare_shards(cfg, tmp_path / "taken", workers=1, progress=False)


def test_ensure_shards_reuses_the_cache_and_rekeys_on_content_change(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", ["alpha", "beta", "gamma"])
    cfg = DataConfig(name="demo", path=str(source), format="jsonl", cache_dir=str(tmp_path / "cache"))
    first = ensure_shards(cfg)
    assert first.parent == tmp_path / "cache" and first.name.startswith("demo-")
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert ensure_shards(cfg) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp
    write_jsonl(source, ["alpha", "beta", "delta"])
    assert ensure_shards(cfg) != first


def test_ensure_shards_returns_explicit_shards_dir_and_rejects_one_without_manifest(make_shards, tmp_path):
    shards = make_shards(["a", "b"])
    assert ensure_shards(DataConfig(format="synthetic", shards_dir=str(shards))) == shards
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match=r"nothing has no manifest\.json"):
        ensure_shards(DataConfig(format="synthetic", shards_dir=str(tmp_path / "nothing")))


def test_check_manifest_rejects_shards_made_with_another_tokenizer(make_shards, shared_data):
    shards = make_shards(["some text", "more"])
    assert check_manifest(shards, load_tokenizer("byte"))["tokenizer"]["vocab_size"] == 259
    llama = load_tokenizer(str(shared_data / "llama2_tokenizer.model"))
    with pytest.raises(
        DataError,
        match=r"made with tokenizer 'byte' \(vocab 259.*model uses .*llama2_tokenizer\.model.*vocab 32000.*re-run launch/prepare_data\.py",
    ):
        check_manifest(shards, llama)


def test_prepare_data_launcher_writes_shards_and_reports_counts(tmp_path):
    out = tmp_path / "c4"
    result = subprocess.run(
        [
            sys.executable,
            "launch/prepare_data.py",
            "data=c4_demo",
            f"data.path={REPO.parent / 'shared/data/c4_demo.jsonl'}",
            "data.tokenizer=byte",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"shards: {out}" in result.stdout and "train: " in result.stdout
    assert manifest(out)["splits"]["train"]["num_docs"] + manifest(out)["splits"]["val"]["num_docs"] == 300


def test_a_text_file_without_blank_lines_warns_that_validation_is_empty(tmp_path: Path, caplog):
    text = tmp_path / "one.txt"
    text.write_text("".join(f"line {i} of a file with no blank lines\n" for i in range(50)))
    cfg = DataConfig(name="one", path=str(text), format="text", tokenizer="byte", val_fraction=0.05)
    with caplog.at_level("WARNING", logger="llmtrain"):
        shards = prepare_shards(cfg, tmp_path / "shards", workers=1, progress=False)
    assert manifest(shards)["splits"]["val"]["num_docs"] == 0
    assert "the validation split is empty: all 1 documents" in caplog.text
    assert "data.text_split=line" in caplog.text


def mixed_text(chars: int, seed: int = 0) -> str:
    """Words, whitespace runs, newlines, accents, CJK and a long stretch with no whitespace."""
    import random

    rng = random.Random(seed)
    words = ["the", "river", "  stone", "café", "東京タワー", "\n", "\t\tx", "don't", "1234", "   ", "a"]
    text = " ".join(rng.choice(words) for _ in range(chars // 5))
    return text[: chars // 2] + "z9" * (chars // 8) + text[chars // 2 :]


@pytest.mark.parametrize("spec", ["byte", "llama2"])
def test_long_texts_tokenized_in_windows_equal_the_whole_text(monkeypatch, shared_data: Path, spec):
    tok = load_tokenizer(str(shared_data / "llama2_tokenizer.model") if spec == "llama2" else "byte")
    # Small windows and margins: many seams, some inside the run with no whitespace.
    monkeypatch.setattr(encode, "_PIECE_CHARS", 1500)
    monkeypatch.setattr(encode, "_PIECE_MARGIN", 32)
    for seed in range(3):
        text = mixed_text(60_000, seed)
        whole = tok(text, add_special_tokens=False, split_special_tokens=True).input_ids
        [windowed] = encode._encode_texts(tok, [text])
        assert windowed.tolist() == [*whole, tok.eos_token_id]


@pytest.mark.slow
def test_one_huge_single_line_document_prepares_in_bounded_memory(tmp_path: Path, shared_data: Path):
    """A 25 MB one-line document (the issue's 34 MB one peaked at 7 GB) stays under 1.5 GB peak RSS."""
    script = f"""
import json, random, resource
from llmtrain.config import DataConfig
from llmtrain.data.pretrain.prepare import prepare_shards
rng = random.Random(0)
words = ["the", "river", "stone,", "cloud", "garden.", "window", "silver", "planet"]
text = " ".join(rng.choice(words) for _ in range(4_000_000))
open({str(tmp_path / "doc.jsonl")!r}, "w").write(json.dumps({{"text": text}}) + "\\n")
assert len(text) > 25_000_000
del text
cfg = DataConfig(name="big", path={str(tmp_path / "doc.jsonl")!r}, format="jsonl",
                 tokenizer={str(shared_data / "llama2_tokenizer.model")!r}, val_fraction=0.0)
out = prepare_shards(cfg, {str(tmp_path / "shards")!r}, workers=1, progress=False)
print("peak_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peak_mb = int(done.stdout.split("peak_mb")[-1])
    assert peak_mb < 1536, f"peak RSS {peak_mb} MB"
