"""Tokenizing one conversation (`llmtrain/data/sft/tokenize.py`): truncation by whole turns, and
the outcomes reported for examples that cannot be kept."""

from __future__ import annotations

from llmtrain.data.sft.chat_templates import resolve_chat_template
from llmtrain.data.sft.formats import Conversation, Message
from llmtrain.data.sft.tokenize import tokenize_conversation
from llmtrain.data.tokenizer.load import load_tokenizer


def two_rounds() -> Conversation:
    return Conversation(
        (
            Message("user", "a" * 20),
            Message("assistant", "b" * 20),
            Message("user", "c" * 20),
            Message("assistant", "d" * 20),
        )
    )


def test_truncate_turns_keeps_leading_whole_rounds_and_their_end_token():
    tok = load_tokenizer("byte")
    template = resolve_chat_template("alpaca", tok, system_prompt="")
    full, outcome = tokenize_conversation(two_rounds(), template, 10_000, "truncate_turns", False, "t")
    assert outcome == "kept"
    cut, outcome = tokenize_conversation(
        two_rounds(), template, len(full.ids) - 5, "truncate_turns", False, "t"
    )
    assert outcome == "truncated" and cut.truncated
    labels = cut.ids[1:][cut.loss_mask[1:] == 1]
    assert tok.decode(labels, skip_special_tokens=False) == "b" * 20 + "</s>"
    assert cut.ids[-1] == tok.eos_token_id  # ends right after the kept reply


def test_over_length_is_one_outcome_whether_dropped_or_not_even_one_round_fits():
    tok = load_tokenizer("byte")
    template = resolve_chat_template("alpaca", tok, system_prompt="")
    assert tokenize_conversation(two_rounds(), template, 60, "drop", False, "t") == (None, "too_long")
    assert tokenize_conversation(two_rounds(), template, 10, "truncate_turns", False, "t") == (
        None,
        "too_long",
    )
