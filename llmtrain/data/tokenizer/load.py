"""Load the tokenizer named by `data.tokenizer` and describe it well enough to detect a mismatch.

Every tokenizer comes back as a Hugging Face fast tokenizer, so the rest of the code (and the HF
export) sees one interface whichever of the three sources it came from:

- `byte`: 256 byte tokens plus `<pad>`, `<s>`, `</s>`, built in code; needs no file or network.
- a sentencepiece `.model` file, converted so it encodes exactly like sentencepiece
  (`llmtrain.data.tokenizer.sentencepiece_model`).
- a Hugging Face tokenizer folder (what `save_pretrained` writes, e.g. a run's exported tokenizer).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtrain.data.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BYTE_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """The tokenizer for `spec` (`byte`, a sentencepiece `.model` file, or an HF tokenizer folder).

    The result always has `eos_token_id` and `pad_token_id` set (see `_ensure_pad`).
    """
    if spec == "byte":
        tok = byte_tokenizer()
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(
                f"data.tokenizer={spec!r} does not exist (resolved to {path.resolve()}, relative to the "
                f"working directory {Path.cwd()}); expected `byte`, a sentencepiece .model file or a "
                "Hugging Face tokenizer folder"
            )
        if path.is_dir():
            tok = _load_hf_folder(path)
        else:
            from llmtrain.data.tokenizer.sentencepiece_model import cached_tokenizer_from_sentencepiece

            tok = cached_tokenizer_from_sentencepiece(path)
        tok.name_or_path = str(path)
    if tok.eos_token_id is None:
        raise DataError(
            f"tokenizer {spec!r} has no end-of-sequence token; pretraining separates documents with it. "
            "Use a tokenizer that defines eos (sentencepiece: eos_id >= 0)"
        )
    _ensure_pad(tok)
    return tok


def byte_tokenizer() -> PreTrainedTokenizerBase:
    """Byte-level tokenizer: token id = byte value for ids 0..255, then `<pad>`, `<s>`, `</s>`.

    A BPE model with the 256 byte symbols as its whole vocabulary and no merges is exactly a byte
    tokenizer, and being a regular `tokenizers` pipeline it saves to `tokenizer.json` and reloads
    through `AutoTokenizer` with no custom code.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # ByteLevel maps byte b to a printable symbol; order the vocab by byte value so id == byte.
    vocab = {symbol: byte for byte, symbol in enumerate(_gpt2_byte_symbols())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # use_regex=False: with no merges, splitting into words first would change nothing but speed.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(BYTE_SPECIAL_TOKENS))
    pad, bos, eos = BYTE_SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=pad, bos_token=bos, eos_token=eos, clean_up_tokenization_spaces=False
    )


def _gpt2_byte_symbols() -> list[str]:
    """The printable symbol ByteLevel uses for each byte 0..255 (GPT-2's bytes_to_unicode)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def _load_hf_folder(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"data.tokenizer={str(path)!r} is a folder but not a loadable Hugging Face tokenizer ({exc}); "
            "expected what `save_pretrained` writes (tokenizer.json / tokenizer_config.json)"
        ) from exc


def _ensure_pad(tok: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token without adding a new one.

    Padded positions carry label -100 and document id -1, so the pad id's only job is to be a valid
    embedding row. We still prefer a dedicated `<pad>` or `<unk>` over eos: code that derives an
    attention mask from `input_ids != pad_token_id` (HF generation, some collators) would otherwise
    mask out every real end-of-document token. Adding a token would change the vocabulary size
    behind the model's back, so eos is the last resort.
    """
    if tok.pad_token_id is not None:
        return
    vocab = tok.get_vocab()
    for candidate in ("<pad>", "[PAD]", tok.unk_token, "<unk>"):
        if candidate is not None and candidate in vocab:
            tok.pad_token = candidate
            return
    tok.pad_token = tok.eos_token


def tokenizer_kind(tok: PreTrainedTokenizerBase) -> str:
    """Where the tokenizer came from: `byte`, `sentencepiece` or `hf` (informational only)."""
    name = str(getattr(tok, "name_or_path", "") or "")
    if name.endswith(".model"):
        return "sentencepiece"
    if not name and len(tok) == 256 + len(BYTE_SPECIAL_TOKENS):
        return "byte"
    return "hf"


def tokenizer_identity(tok: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Size, special ids and a content fingerprint, stored in the shard manifest.

    The fingerprint hashes the vocabulary (every token string with its id) and the special ids, not
    the file it was loaded from: the same tokenizer saved to another folder, or the byte tokenizer
    rebuilt on another machine, keeps its fingerprint; a different vocabulary never does.
    """
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    specials = {
        "eos_id": tok.eos_token_id,
        "bos_id": tok.bos_token_id,
        "pad_id": tok.pad_token_id,
        "unk_id": tok.unk_token_id,
    }
    digest = hashlib.sha256(json.dumps([vocab, specials], ensure_ascii=False).encode("utf-8"))
    return {
        "kind": tokenizer_kind(tok),
        "name": str(getattr(tok, "name_or_path", "") or "byte"),
        "vocab_size": len(tok),
        **specials,
        "fingerprint": digest.hexdigest(),
    }
