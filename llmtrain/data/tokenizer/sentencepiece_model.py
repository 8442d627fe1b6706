"""Build a Hugging Face fast tokenizer from a sentencepiece `.model` file that encodes exactly like
sentencepiece itself.

Why not `LlamaTokenizer.from_pretrained`: transformers 5 derives the BPE merge ranks from piece *ids*,
but sentencepiece merges by piece *score*. The two disagree wherever a piece was given an artificial
score, e.g. Llama 2's whitespace runs ("▁▁", score -1e9): `"a  b"` becomes `▁▁ b` in transformers
but `▁ ▁b` in sentencepiece, so a model trained on one and served with the other sees different
ids. Here the merges are ranked by score (ties by id), and the normaliser and pre-tokeniser follow
the model's `normalizer_spec`.
"""

from __future__ import annotations

from pathlib import Path

from llmtrain.data.errors import DataError

# sentencepiece_model.proto ModelProto.SentencePiece.Type
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
# sentencepiece_model.proto TrainerSpec.ModelType
_UNIGRAM, _BPE = 1, 2


def read_model_proto(path: Path):
    """Parse a `.model` file; anything that is not a sentencepiece model raises `DataError`."""
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError as exc:
        raise DataError(
            f"{path} is not a sentencepiece model ({exc}); expected a `.model` file written by "
            "sentencepiece (e.g. launch/train_tokenizer.py), or use data.tokenizer=byte or a "
            "Hugging Face tokenizer folder"
        ) from exc
    if not proto.pieces:
        # Protobuf parses many arbitrary byte strings (an empty file, some text) as an empty message.
        raise DataError(
            f"{path} is not a sentencepiece model (it holds no vocabulary pieces); expected a `.model` "
            "file written by sentencepiece (e.g. launch/train_tokenizer.py)"
        )
    return proto


def _bpe_merges(pieces: list, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every (left, right) split of a mergeable piece, ranked like sentencepiece merges: by score."""
    ranked: list[tuple[float, int, str, str]] = []
    for piece_id, p in enumerate(pieces):
        if p.type not in (_NORMAL, _USER_DEFINED) or len(p.piece) < 2:
            continue
        for cut in range(1, len(p.piece)):
            left, right = p.piece[:cut], p.piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-p.score, piece_id, left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def tokenizer_from_sentencepiece(path: Path):
    """A `PreTrainedTokenizerFast` equivalent to `sentencepiece.SentencePieceProcessor(path)`.

    Control pieces (`<s>`, `</s>`, ...) become special tokens and user-defined pieces become added
    tokens, as sentencepiece treats them. Bos/eos/unk/pad come from the model's trainer spec.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    proto = read_model_proto(path)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    pieces = list(proto.pieces)
    byte_fallback = bool(spec.byte_fallback)
    unk_piece = pieces[spec.unk_id].piece if spec.unk_id >= 0 else None

    if spec.model_type == _BPE:
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        model = models.BPE(
            vocab=vocab,
            merges=_bpe_merges(pieces, vocab),
            unk_token=unk_piece,
            fuse_unk=True,
            byte_fallback=byte_fallback,
        )
    elif spec.model_type == _UNIGRAM:
        model = models.Unigram(
            [(p.piece, p.score) for p in pieces],
            unk_id=spec.unk_id if spec.unk_id >= 0 else None,
            byte_fallback=byte_fallback,
        )
    else:
        raise DataError(
            f"{path}: sentencepiece model_type {spec.model_type} is not supported; train a bpe or "
            "unigram model (launch/train_tokenizer.py --model-type bpe|unigram)"
        )
    tok = Tokenizer(model)

    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [
            normalizers.Replace(Regex(" {2,}"), " "),
            normalizers.Strip(left=True, right=True),
        ]
    # sentencepiece escapes spaces as "▁" and always prepends one to the whole text
    # (add_dummy_prefix). The Metaspace pre-tokenizer would skip the prefix when the text already
    # starts with a space, so both are done here as normalisation, and nothing splits the text
    # before the model runs (sentencepiece does not split on whitespace either).
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    dec = [decoders.Replace("▁", " ")]
    if byte_fallback:
        dec += [decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        dec.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(dec)

    tok.add_special_tokens(
        [AddedToken(p.piece, special=True, normalized=False) for p in pieces if p.type == _CONTROL]
    )
    tok.add_tokens(
        [AddedToken(p.piece, special=False, normalized=False) for p in pieces if p.type == _USER_DEFINED]
    )

    def piece(piece_id: int) -> str | None:
        return pieces[piece_id].piece if 0 <= piece_id < len(pieces) else None

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=piece(spec.bos_id),
        eos_token=piece(spec.eos_id),
        unk_token=unk_piece,
        pad_token=piece(spec.pad_id),
        clean_up_tokenization_spaces=False,
    )


# Bump when the conversion above changes: a cached tokenizer.json from an older converter is ignored.
CONVERTER_VERSION = 1


def cached_tokenizer_from_sentencepiece(path: Path, cache_root: Path | None = None):
    """`tokenizer_from_sentencepiece`, kept as a `tokenizer.json` folder under the cache.

    Converting ranks every merge in Python (1.3 s for Llama 2's 32k pieces on one core, several
    seconds on a busy node, and every rank and every preparation task pays it); reloading the saved
    fast tokenizer takes a fifth of that. The entry is keyed by the `.model` file's content and the
    converter and library versions, written to a temporary folder and renamed into place, so ranks
    converting at once never read a half-written entry; an entry that fails to load is converted again.
    """
    import hashlib
    import os
    import shutil
    import tempfile

    import tokenizers
    import transformers
    from transformers import PreTrainedTokenizerFast

    root = (
        cache_root
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmtrain" / "tokenizers"
    )
    digest = hashlib.sha256(Path(path).read_bytes())
    digest.update(f"{CONVERTER_VERSION}/{transformers.__version__}/{tokenizers.__version__}".encode())
    entry = root / digest.hexdigest()[:24]
    if entry.is_dir():
        try:
            return PreTrainedTokenizerFast.from_pretrained(str(entry), local_files_only=True)
        except (OSError, ValueError):
            shutil.rmtree(entry, ignore_errors=True)
    tok = tokenizer_from_sentencepiece(path)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
        tok.save_pretrained(str(tmp))
        try:
            tmp.rename(entry)
        except OSError:  # another process published it first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # a read-only or full cache costs the next load a conversion, nothing else
    return tok
