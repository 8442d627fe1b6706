from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from llmtrain.data.errors import DataError
from llmtrain.data.tokenizer.load import load_tokenizer, tokenizer_identity

TRICKY = [
    "Hello world!  This is  a test.\n\nNew para  ünïcödé 🤖 17 + 25 = 42.",
    " leading space",
    "  two leading spaces",
    "tab\tand   runs of    spaces   ",
    "a </s> b <s> c <unk>",
    "全角　テキスト and 中文",
    "",
    "\n",
]


@pytest.fixture(scope="module")
def llama(shared_data: Path):
    return load_tokenizer(str(shared_data / "llama2_tokenizer.model"))


def test_byte_tokenizer_maps_each_byte_to_its_value_and_has_eos_pad():
    tok = load_tokenizer("byte")
    text = "héllo </s> 🤖"
    ids = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert (len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (259, 256, 257, 258)


def test_byte_tokenizer_save_pretrained_reloads_identically_with_autotokenizer(tmp_path):
    tok = load_tokenizer("byte")
    tok.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    for text in TRICKY:
        assert (
            reloaded(text, add_special_tokens=False)["input_ids"]
            == tok(text, add_special_tokens=False)["input_ids"]
        )
    assert tokenizer_identity(reloaded)["fingerprint"] == tokenizer_identity(tok)["fingerprint"]
    assert tokenizer_identity(load_tokenizer(str(tmp_path / "tok")))["pad_id"] == 256


def test_sentencepiece_model_encodes_exactly_like_sentencepiece(llama, shared_data):
    sp = spm.SentencePieceProcessor(model_file=str(shared_data / "llama2_tokenizer.model"))
    paragraphs = (shared_data / "tinyshakespeare.txt").read_text().split("\n\n")[:1500]
    pages = [
        json.loads(line)["text"] for line in (shared_data / "c4_demo.jsonl").read_text().splitlines()[:100]
    ]
    texts = TRICKY + paragraphs + pages
    ours = llama(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    mismatched = [t[:60] for t, a, b in zip(texts, ours, sp.encode(texts)) if a != b]
    assert mismatched == []
    # The double-space case transformers' own Llama conversion gets wrong (▁▁ + This vs ▁ + ▁This).
    assert llama("a  This", add_special_tokens=False)["input_ids"] == sp.encode("a  This")


def test_sentencepiece_special_ids_come_from_the_model(llama):
    ident = tokenizer_identity(llama)
    assert (ident["vocab_size"], ident["bos_id"], ident["eos_id"], ident["unk_id"]) == (32000, 1, 2, 0)
    # No <pad> in the Llama 2 vocabulary: pad falls back to <unk>, not to eos.
    assert ident["pad_id"] == 0
    assert ident["kind"] == "sentencepiece"


def test_hf_tokenizer_folder_loads_with_the_same_fingerprint(llama, tmp_path):
    llama.save_pretrained(tmp_path / "llama")
    again = load_tokenizer(str(tmp_path / "llama"))
    assert tokenizer_identity(again)["fingerprint"] == tokenizer_identity(llama)["fingerprint"]
    assert (
        again("a  This", add_special_tokens=False)["input_ids"]
        == llama("a  This", add_special_tokens=False)["input_ids"]
    )


@pytest.mark.parametrize("content", [b"this is plain text, not a model\n", b""], ids=["text", "empty"])
def test_file_that_is_not_a_sentencepiece_model_raises_naming_it(tmp_path, content):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=r"tokenizer\.model is not a sentencepiece model.*expected"):
        load_tokenizer(str(bad))


def test_missing_tokenizer_path_raises_naming_it(tmp_path):
    with pytest.raises(DataError, match=r"data\.tokenizer=.*nope\.model.* does not exist"):
        load_tokenizer(str(tmp_path / "nope.model"))


def test_folder_without_tokenizer_files_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a loadable Hugging Face tokenizer"):
        load_tokenizer(str(tmp_path / "empty"))


def test_fingerprint_differs_between_vocabularies(llama):
    assert (
        tokenizer_identity(llama)["fingerprint"] != tokenizer_identity(load_tokenizer("byte"))["fingerprint"]
    )


def test_cached_sentencepiece_conversion_reloads_the_same_tokenizer_and_survives_a_broken_entry(
    shared_data, tmp_path
):
    from llmtrain.data.tokenizer.sentencepiece_model import (
        cached_tokenizer_from_sentencepiece,
        tokenizer_from_sentencepiece,
    )

    model = shared_data / "llama2_tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(model))
    fresh = tokenizer_from_sentencepiece(model)
    converted = cached_tokenizer_from_sentencepiece(model, tmp_path)  # converts, writes the entry
    (entry,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    reloaded = cached_tokenizer_from_sentencepiece(model, tmp_path)  # reads it
    texts = TRICKY + (shared_data / "tinyshakespeare.txt").read_text().split("\n\n")[:300]
    expected = sp.encode(texts)
    for tok in (converted, reloaded):
        assert tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"] == expected
        assert tokenizer_identity(tok)["fingerprint"] == tokenizer_identity(fresh)["fingerprint"]
        assert (tok.bos_token, tok.eos_token, tok.unk_token) == (
            fresh.bos_token,
            fresh.eos_token,
            fresh.unk_token,
        )
    # A truncated entry (a crash elsewhere, a full disk) is converted again, not trusted.
    (entry / "tokenizer.json").write_text("{")
    again = cached_tokenizer_from_sentencepiece(model, tmp_path)
    assert again(texts[:20], add_special_tokens=False, split_special_tokens=True)["input_ids"] == sp.encode(
        texts[:20]
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
