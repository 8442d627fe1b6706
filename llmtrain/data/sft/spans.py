"""A rendered conversation (one string, cut into character spans) → token segments, tokenized once.

Why once: tokenizing each turn on its own is not what a server does. A sentencepiece normaliser
prepends "▁" to every call, so per-turn ids carry a stray space at every turn boundary
(`<tool_call>\\n {json} \\n</tool_call>`), and `apply_chat_template(tokenize=True)` (vLLM, TGI,
transformers) gives other ids than the model was trained on. Here the whole text is tokenized in
one call with offsets, exactly as `apply_chat_template` does (`add_special_tokens=False`), and each
token goes to the span its characters fall in.

Which span a token belongs to: a token that overlaps a trainable span is trainable (the rule of
`apply_chat_template(return_assistant_tokens_mask=True)`): a token straddling the start of a reply
must be produced to produce the reply. Any other token belongs to the span its first character is in.

Text in message content that spells a special token ("</s>") is recognised as that token by a
plain call, as `apply_chat_template` does by default. Protected ranges (our own templates'
message content) keep such text as text: only when one holds a special token is the text
tokenized run by run, between the template's own special tokens, with special tokens split in the
runs. For normalisers that treat every run alike (sentencepiece's dummy prefix, byte-level) this
gives the one-call ids everywhere else; a tokenizer that prepends "▁" only to the start of the
input may differ at those run starts, in those examples only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass
class Segment:
    """Consecutive token ids of a conversation, trained on or not."""

    ids: list[int]
    trainable: bool


@dataclass(frozen=True)
class Span:
    """Characters `[start, end)` of the rendered text."""

    start: int
    end: int
    trainable: bool


def encode_spans(
    tokenizer: Any, text: str, spans: list[Span], protected: list[tuple[int, int]] = ()
) -> list[Segment]:
    """One segment per non-empty span, in order; the ids concatenated are the ids of `text`.

    `protected`: character ranges (message content) where text spelling a special token stays text.
    """
    ids, offsets = _tokenize_once(tokenizer, text)
    special = set(tokenizer.all_special_ids)
    if protected and any(
        t in special and any(a <= o[0] and o[1] <= b for a, b in protected) for t, o in zip(ids, offsets)
    ):
        ids, offsets = _tokenize_runs(tokenizer, text, protected)
    owner = _owners(offsets, spans)
    segments = [Segment([], s.trainable) for s in spans]
    for token, k in zip(ids, owner):
        segments[k].ids.append(token)
    return [s for s in segments if s.ids]


def _tokenize_once(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _tokenize_runs(
    tokenizer: Any, text: str, protected: list[tuple[int, int]]
) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of `text` with special tokens recognised outside the protected ranges only."""
    names = sorted(tokenizer.all_special_tokens, key=len, reverse=True)
    cuts: list[tuple[int, int]] = []  # (start, end) of the template's own special tokens
    if names:
        for m in re.finditer("|".join(map(re.escape, names)), text):
            if not any(a <= m.start() < b for a, b in protected):
                cuts.append((m.start(), m.end()))
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    pos = 0
    for a, b in [*cuts, (len(text), len(text))]:
        if a > pos:
            enc = tokenizer(
                text[pos:a], add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
            )
            ids += enc["input_ids"]
            offsets += [(x + pos, y + pos) for x, y in enc["offset_mapping"]]
        if b > a:
            ids.append(tokenizer.convert_tokens_to_ids(text[a:b]))
            offsets.append((a, b))
        pos = b
    return ids, offsets


def _owners(offsets: list[tuple[int, int]], spans: list[Span]) -> list[int]:
    """For each token, the index of its span (spans are in order and cover the text)."""
    owner: list[int] = []
    k = 0
    for start, end in offsets:
        # Advance to the span holding the token's first character (an empty token: its position).
        while k + 1 < len(spans) and start >= spans[k].end and spans[k + 1].start <= start:
            k += 1
        chosen = k
        # A token that reaches into a later trainable span belongs to it.
        j = k
        while not spans[chosen].trainable and j + 1 < len(spans) and spans[j + 1].start < end:
            j += 1
            if spans[j].trainable:
                chosen = j
        owner.append(chosen)
    # Ownership never goes backwards: segments stay in text order.
    for i in range(1, len(owner)):
        owner[i] = max(owner[i], owner[i - 1])
    return owner
