from __future__ import annotations

import pytest
import sentencepiece as spm

from llmtrain.data.errors import DataError
from llmtrain.data.tokenizer.load import load_tokenizer, tokenizer_identity
from llmtrain.data.tokenizer.train import train_sentencepiece


def test_trained_bpe_model_loads_and_encodes_like_sentencepiece(shared_data, tmp_path):
    model = train_sentencepiece(
        [shared_data / "tinyshakespeare.txt", shared_data / "c4_demo.jsonl"], 600, tmp_path / "tok" / "sp"
    )
    assert model == tmp_path / "tok" / "sp.model" and model.is_file()
    tok = load_tokenizer(str(model))
    ident = tokenizer_identity(tok)
    assert (ident["vocab_size"], ident["unk_id"], ident["bos_id"], ident["eos_id"], ident["pad_id"]) == (
        600,
        0,
        1,
        2,
        3,
    )
    sp = spm.SentencePieceProcessor(model_file=str(model))
    texts = (shared_data / "tinyshakespeare.txt").read_text().split("\n\n")[:500] + [
        "  spaced   out ",
        "数字 12345 🤖",
    ]
    assert tok(texts, add_special_tokens=False)["input_ids"] == sp.encode(texts)
    # Byte fallback: characters never seen in training still round-trip.
    assert tok.decode(tok("数字 🤖", add_special_tokens=False)["input_ids"]) == "数字 🤖"


def test_unigram_model_trains_and_loads(shared_data, tmp_path):
    model = train_sentencepiece(
        [shared_data / "tinyshakespeare.txt"], 500, tmp_path / "uni", model_type="unigram"
    )
    tok = load_tokenizer(str(model))
    assert len(tok) == 500 and tok.eos_token_id == 2
    assert (
        tok.decode(tok("To be, or not to be", add_special_tokens=False)["input_ids"]) == "To be, or not to be"
    )


def test_missing_input_and_impossible_vocab_size_raise_data_errors(shared_data, tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt does not exist"):
        train_sentencepiece([tmp_path / "nope.txt"], 500, tmp_path / "x")
    with pytest.raises(DataError, match="sentencepiece training .* failed"):
        train_sentencepiece([shared_data / "tinyshakespeare.txt"], 100, tmp_path / "x")
