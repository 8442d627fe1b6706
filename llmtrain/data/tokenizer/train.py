"""Train a sentencepiece tokenizer on text / jsonl files.

The trained model is what `data.tokenizer=PATH.model` loads. Settings favour pretraining: byte
fallback (no text is ever `<unk>`), digits split one by one (arithmetic generalises), whitespace
kept as written (code and poetry round-trip), and ids 0-3 fixed as `<unk> <s> </s> <pad>`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from llmtrain.data.errors import DataError
from llmtrain.data.pretrain.sources import EXTENSION_FORMATS, iter_file_documents

MODEL_TYPES = ("bpe", "unigram")
# sentencepiece drops sentences longer than this (bytes); ours are lines, so few are affected.
_MAX_SENTENCE_BYTES = 16384


def train_sentencepiece(
    inputs: Sequence[Path],
    vocab_size: int,
    out_prefix: Path,
    text_field: str = "text",
    model_type: str = "bpe",
    max_sentences: int = 5_000_000,
) -> Path:
    """Train on the lines of every document in `inputs`; returns `<out_prefix>.model`.

    Text is streamed to sentencepiece line by line (it treats each item as one sentence), and it
    samples at most `max_sentences` of them, so memory stays bounded on a large corpus.
    """
    import sentencepiece as spm

    if model_type not in MODEL_TYPES:
        raise DataError(f"model type {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    files = [Path(p) for p in inputs]
    for path in files:
        if not path.is_file():
            raise DataError(f"tokenizer training input {path} does not exist")
        if path.suffix.lower() not in EXTENSION_FORMATS:
            raise DataError(f"cannot tell the format of {path}; use {', '.join(EXTENSION_FORMATS)} files")
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(files, text_field),
            model_prefix=str(out_prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            character_coverage=0.9995,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=_MAX_SENTENCE_BYTES,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as exc:  # e.g. "Vocabulary size is too high/small" with the exact bound
        raise DataError(f"sentencepiece training on {', '.join(map(str, files))} failed: {exc}") from exc
    return out_prefix.with_suffix(".model")


def _sentences(files: list[Path], text_field: str) -> Iterator[str]:
    for path in files:
        fmt = EXTENSION_FORMATS[path.suffix.lower()]
        for doc in iter_file_documents(path, fmt, text_field, text_split="paragraph"):
            for line in doc.text.split("\n"):
                if line.strip():
                    yield line
