"""One conversation → token ids and a loss mask that fits `data.seq_len`, and the audit of a whole set.

The loss mask marks the tokens a model is trained to *produce*: every assistant reply (and tool
call) including its end-of-turn token. It comes from the template's segments, never from comparing
ids with the pad or eos id, so an eos that doubles as the pad token is still a label.

Truncation works on rounds (the prompt turns before a reply, plus the reply): `truncate_turns`
keeps the leading whole rounds that fit, so no reply is cut mid-way and no reply loses its end
token; `drop` discards any conversation that does not fit. Whatever is dropped is counted by reason
in `SFTAudit`, which the preparation step logs and stores in the cache manifest. An example
dropped for length is always "longer than data.seq_len" (`dropped_too_long`): with `drop` the
conversation, with `truncate_turns` even its first round.

The audit also counts what is kept but probably wrong: template placeholders such as `{{name}}`
(LLaMA-Factory's identity set ships them to be filled in; trained literally, the model learns to
say "{{name}}"), reported with an example location. Empty assistant replies are skipped as
malformed (`formats.EmptyReply`) and counted apart.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmtrain.data.errors import DataError
from llmtrain.data.sft.chat_templates import ChatTemplate, Segment, TemplateError
from llmtrain.data.sft.formats import Conversation, EmptyReply

_REASONS_KEPT = 5
# How summaries and warnings name an example dropped for length (one name everywhere).
TOO_LONG = "longer than data.seq_len"
# `{{name}}`, `{{ author }}`: a Jinja/mustache slot left unfilled in the data.
PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][\w.]*\s*\}\}")


def find_placeholders(conv: Conversation) -> list[str]:
    """The `{{...}}` placeholders in the conversation's messages, in order."""
    return [m.group(0) for msg in conv.messages for m in PLACEHOLDER.finditer(msg.content)]


@dataclass
class TokenizedExample:
    ids: np.ndarray  # int64 token ids
    loss_mask: np.ndarray  # uint8, 1 where the token is a training target
    truncated: bool


def _rounds(segments: list[Segment]) -> list[list[Segment]]:
    """Split after every trainable segment: each round ends with one reply."""
    rounds: list[list[Segment]] = [[]]
    for seg in segments:
        rounds[-1].append(seg)
        if seg.trainable:
            rounds.append([])
    return [r for r in rounds if r]


def tokenize_conversation(
    conv: Conversation,
    template: ChatTemplate,
    max_tokens: int,
    truncation: str,
    train_on_prompt: bool,
    where: str,
) -> tuple[TokenizedExample | None, str]:
    """(example, outcome); outcome is `kept`, `truncated`, `too_long` (even with `truncate_turns`
    when the first round does not fit) or `no_trainable_left`.

    Raises `DataError` when the template yields no assistant span at all: that is a template bug
    (every normalised conversation has an assistant turn), not a property of one example.
    """
    segments = template.encode(conv)
    if not any(s.trainable and s.ids for s in segments):
        raise TemplateError(
            f"{where}: chat template {template.name!r} produced no assistant tokens for a conversation "
            "with an assistant turn; choose another data.sft.chat_template"
        )
    total = sum(len(s.ids) for s in segments)
    truncated = False
    if total > max_tokens:
        if truncation == "drop":
            return None, "too_long"
        kept: list[Segment] = []
        for rnd in _rounds(segments):
            if sum(len(s.ids) for s in kept + rnd) > max_tokens:
                break
            kept += rnd
        # Only complete rounds: a trailing round without its reply adds nothing to learn from.
        while kept and not kept[-1].trainable:
            kept.pop()
        if not kept:
            return None, "too_long"
        segments, truncated = kept, True
    ids = np.fromiter((i for s in segments for i in s.ids), dtype=np.int64)
    mask = np.concatenate(
        [np.full(len(s.ids), 1 if (s.trainable or train_on_prompt) else 0, dtype=np.uint8) for s in segments]
    )
    if not mask[1:].any():
        return None, "no_trainable_left"
    return TokenizedExample(ids, mask, truncated), "truncated" if truncated else "kept"


@dataclass
class SFTAudit:
    """Counts of what preparation read, kept, cut and dropped, and the label statistics checked before
    training starts."""

    examples_read: int = 0
    kept: int = 0
    truncated: int = 0
    skipped_malformed: int = 0
    # Of the malformed: conversations with an empty assistant reply.
    skipped_empty_reply: int = 0
    dropped_too_long: int = 0
    dropped_no_trainable_left: int = 0
    tokens: int = 0
    trainable_tokens: int = 0
    # Label positions that hold the end-of-turn token, and kept examples whose last label is not it.
    end_token_labels: int = 0
    examples_without_end_label: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    skip_kinds: Counter = field(default_factory=Counter)
    # Read examples holding `{{...}}` placeholders (kept), which ones, and where the first is.
    placeholder_examples: int = 0
    placeholders: Counter = field(default_factory=Counter)
    placeholder_example: str | None = None

    def skip(self, error: DataError) -> None:
        self.skipped_malformed += 1
        self.skipped_empty_reply += isinstance(error, EmptyReply)
        text = str(error)
        # "file example N, field 'x': what" -> "what" as the kind, so the summary groups reasons.
        self.skip_kinds[text.split(": ", 1)[-1].split(";")[0][:80]] += 1
        if len(self.skip_reasons) < _REASONS_KEPT:
            self.skip_reasons.append(text)

    def check_placeholders(self, conv: Conversation, where: str) -> None:
        found = find_placeholders(conv)
        if found:
            self.placeholder_examples += 1
            self.placeholders.update(found)
            self.placeholder_example = self.placeholder_example or f"{where}: {found[0]}"

    def add(self, example: TokenizedExample, end_token_id: int | None) -> None:
        self.kept += 1
        self.truncated += example.truncated
        self.tokens += len(example.ids)
        labels = example.ids[1:][example.loss_mask[1:] == 1]
        self.trainable_tokens += len(labels)
        if end_token_id is not None:
            self.end_token_labels += int((labels == end_token_id).sum())
        if end_token_id is None or not len(labels) or labels[-1] != end_token_id:
            self.examples_without_end_label += 1

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("skip_kinds", "placeholders")}
        out["skip_kinds"] = dict(self.skip_kinds.most_common(10))
        out["placeholders"] = dict(self.placeholders.most_common(10))
        return out

    def check(self, name: str, end_token_id: int | None, end_token: str | None) -> None:
        """The hard pre-flight errors: nothing to train on, or a model that could never learn to stop."""
        dropped = self.dropped_too_long + self.dropped_no_trainable_left
        if self.kept == 0:
            raise DataError(
                f"data={name}: no usable example out of {self.examples_read} ({self.skipped_malformed} malformed, "
                f"{dropped} {TOO_LONG}); first problems: {self.skip_reasons[:3]}"
            )
        if end_token_id is None or self.end_token_labels == 0:
            raise DataError(
                f"data={name}: the end-of-turn token ({end_token!r}, id {end_token_id}) is never a label, so "
                "the model would never learn to stop replying; the chat template must end assistant turns "
                "with an end token (choose another data.sft.chat_template)"
            )

    def summary(self) -> str:
        no_labels = (
            f", {self.dropped_no_trainable_left} dropped with no trainable token"
            if self.dropped_no_trainable_left
            else ""
        )
        return (
            f"{self.examples_read} examples read: {self.kept} kept ({self.truncated} truncated to whole turns), "
            f"{self.skipped_malformed} malformed skipped ({self.skipped_empty_reply} with an empty assistant "
            f"reply), {self.dropped_too_long} dropped as {TOO_LONG}{no_labels}, "
            f"{self.placeholder_examples} with {{{{...}}}} placeholders; {self.tokens:,} tokens, "
            f"{self.trainable_tokens:,} trainable ({100 * self.trainable_tokens / max(self.tokens, 1):.1f}%), "
            f"end-of-turn labels {self.end_token_labels:,}"
        )
