"""Label masks from chat templates: exactly the assistant replies (and tool calls) plus their end
token carry labels, in every format and template, also when the pad token is the eos token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmtrain.data.collate import collate
from llmtrain.data.errors import DataError
from llmtrain.data.sft.chat_templates import NAMED_TEMPLATES, TemplateError, resolve_chat_template
from llmtrain.data.sft.dataset import example_tensors
from llmtrain.data.sft.formats import Conversation, Message, to_conversation
from llmtrain.data.sft.tokenize import tokenize_conversation
from llmtrain.data.tokenizer.load import load_tokenizer

IGNORE = -100


@pytest.fixture(scope="module")
def byte_tok():
    return load_tokenizer("byte")


@pytest.fixture(scope="module")
def llama2_tok(shared_data: Path):
    return load_tokenizer(str(shared_data / "llama2_tokenizer.model"))


@pytest.fixture(scope="module")
def conversations(shared_data: Path) -> dict[str, Conversation]:
    alpaca = json.loads((shared_data / "alpaca_en_demo.json").read_text())
    with_input = next(i for i, r in enumerate(alpaca) if r["input"])
    sharegpt = json.loads((shared_data / "sharegpt_toolcall_demo.json").read_text())
    messages = {
        "messages": [
            {"role": "system", "content": "You answer in one line."},
            {"role": "user", "content": "Weather in Oslo? Note: </s> is not an eos here."},
            {
                "role": "assistant",
                "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}],
            },
            {"role": "tool", "content": '{"sky": "rain"}'},
            {"role": "assistant", "content": "Rain in Oslo."},
            {"role": "user", "content": "And tomorrow?"},
            {"role": "assistant", "content": "I cannot tell."},
        ]
    }
    return {
        "alpaca": to_conversation(alpaca[with_input], "alpaca", "alpaca"),
        "sharegpt": to_conversation(sharegpt[0], "sharegpt", "sharegpt"),
        "messages": to_conversation(messages, "messages", "messages"),
    }


def labelled_ids(
    conv: Conversation, template, max_tokens: int = 10_000, train_on_prompt: bool = False
) -> list[int]:
    """The label-carrying token ids, as the training batches carry them (after the shift)."""
    example, _ = tokenize_conversation(conv, template, max_tokens, "truncate_turns", train_on_prompt, "test")
    labels = example_tensors(example.ids, example.loss_mask, 0)["labels"]
    return labels[labels != IGNORE].tolist()


def expected_text(conv: Conversation, template_name: str, end: str) -> str:
    """Every assistant reply / tool call as the template writes it, each closed by the end token."""
    spec = NAMED_TEMPLATES[template_name]
    out = []
    for m in conv.messages:
        if m.role in ("assistant", "tool_call"):
            body = spec.assistant if m.role == "assistant" else spec.tool_call
            out.append(body.replace("{content}", m.content).replace("{end}", end))
    return "".join(out)


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "messages"])
@pytest.mark.parametrize("name", sorted(NAMED_TEMPLATES))
def test_labels_decode_to_exactly_the_assistant_replies_and_end_tokens(byte_tok, conversations, fmt, name):
    conv = conversations[fmt]
    template = resolve_chat_template(name, byte_tok)
    decoded = byte_tok.decode(labelled_ids(conv, template), skip_special_tokens=False)
    assert decoded == expected_text(conv, name, byte_tok.eos_token)


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "messages"])
def test_replies_are_labelled_as_tokenized_in_context_with_sentencepiece(llama2_tok, conversations, fmt):
    # llama3's reply body is the bare content after "\n\n": every label span is the content's ids as
    # they come after a newline (no dummy-prefix "▁", unlike the content tokenized alone), + the end id.
    conv = conversations[fmt]
    template = resolve_chat_template("llama3", llama2_tok)
    newline = llama2_tok.convert_tokens_to_ids("<0x0A>")
    expected = []
    for m in conv.messages:
        if m.role in ("assistant", "tool_call"):
            ids = llama2_tok(
                "\n\n" + m.content, add_special_tokens=False, split_special_tokens=True
            ).input_ids
            assert ids[1:3] == [newline, newline]
            expected += ids[3:]
            expected.append(llama2_tok.eos_token_id)
    assert labelled_ids(conv, template) == expected


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "messages"])
def test_every_assistant_turn_ends_with_a_labelled_eos_even_when_pad_is_eos(conversations, fmt):
    tok = load_tokenizer("byte")
    tok.pad_token = tok.eos_token  # the trap: masking labels by `!= pad_id` would drop every eos
    assert tok.pad_token_id == tok.eos_token_id
    conv = conversations[fmt]
    template = resolve_chat_template("chatml", tok)
    example, _ = tokenize_conversation(conv, template, 10_000, "drop", False, "test")
    short = example_tensors(example.ids[:40], example.loss_mask[:40], 0)
    long = example_tensors(example.ids, example.loss_mask, 0)
    batch = collate([long, short], pad_id=tok.pad_token_id)
    labels = batch["labels"][0]
    turns = sum(m.role in ("assistant", "tool_call") for m in conv.messages)
    assert int((labels == tok.eos_token_id).sum()) == turns
    # The padded row: padding is input pad id, label -100, document -1, whatever the pad id equals.
    pad = batch["document_ids"][1] == -1
    assert pad.any() and (batch["labels"][1][pad] == IGNORE).all()
    assert (batch["input_ids"][1][pad] == tok.pad_token_id).all()


def test_train_on_prompt_labels_every_token_after_the_first(byte_tok, conversations):
    conv = conversations["messages"]
    template = resolve_chat_template("chatml", byte_tok)
    example, _ = tokenize_conversation(conv, template, 10_000, "drop", True, "test")
    assert labelled_ids(conv, template, train_on_prompt=True) == example.ids[1:].tolist()


def test_text_that_looks_like_a_special_token_is_not_one(byte_tok, conversations):
    conv = conversations["messages"]  # its user turn contains the text "</s>"
    template = resolve_chat_template("chatml", byte_tok)
    user_segment = template.encode(conv)[2]
    assert not user_segment.trainable and b"</s>" in bytes(user_segment.ids[:-2])
    assert user_segment.ids.count(byte_tok.eos_token_id) == 1  # only the turn's own end


def test_generation_prompt_is_the_training_prefix_before_the_reply(byte_tok, llama2_tok):
    conv = Conversation((Message("user", "What is 2 + 2?"), Message("assistant", "4")))
    for tok in (byte_tok, llama2_tok):
        for name in NAMED_TEMPLATES:
            template = resolve_chat_template(name, tok)
            segments = template.encode(conv)
            reply = next(i for i, s in enumerate(segments) if s.trainable)
            prefix = [t for s in segments[:reply] for t in s.ids]
            assert template.encode_prompt(Conversation(conv.messages[:1])) == prefix


CHATML_JINJA = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') + '</s>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_tokenizer_own_template_labels_reply_through_its_end_token():
    tok = load_tokenizer("byte")
    tok.chat_template = CHATML_JINJA
    template = resolve_chat_template("auto", tok)
    assert template.name == "tokenizer" and template.end_token_id == tok.eos_token_id
    conv = Conversation(
        (
            Message("user", "hi"),
            Message("assistant", "hello"),
            Message("user", "bye"),
            Message("assistant", "ciao"),
        )
    )
    decoded = tok.decode(labelled_ids(conv, template), skip_special_tokens=False)
    assert decoded == "hello</s>ciao</s>"  # the newline after </s> belongs to the next prompt
    prompt = template.encode_prompt(Conversation(conv.messages[:1]))
    assert tok.decode(prompt) == "<|im_start|>user\nhi</s>\n<|im_start|>assistant\n"


def test_template_needing_a_system_message_the_data_lacks_says_how_to_fix_it():
    tok = load_tokenizer("byte")
    tok.chat_template = (
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system message is required') }}{% endif %}"
        + CHATML_JINJA
    )
    conv = Conversation((Message("user", "hi"), Message("assistant", "hello")))
    with pytest.raises(DataError, match="a system message is required.*data.sft.system_prompt"):
        resolve_chat_template("tokenizer", tok).encode(conv, "train.json example 3")
    fixed = resolve_chat_template("tokenizer", tok, system_prompt="You help.")
    assert tok.decode(labelled_ids(conv, fixed), skip_special_tokens=False) == "hello</s>"


def test_template_that_drops_assistant_turns_is_a_hard_error():
    tok = load_tokenizer("byte")
    tok.chat_template = "{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] + '</s>' }}{% endif %}{% endfor %}"
    conv = Conversation((Message("user", "hi"), Message("assistant", "hello")))
    with pytest.raises(TemplateError, match="no assistant tokens"):
        tokenize_conversation(
            conv, resolve_chat_template("tokenizer", tok), 1000, "drop", False, "f example 0"
        )


def test_tokenizer_template_requested_without_one_is_an_error(byte_tok):
    with pytest.raises(DataError, match="has no chat_template"):
        resolve_chat_template("tokenizer", byte_tok)


def test_end_of_turn_token_prefers_the_template_token_when_the_vocab_has_it(byte_tok):
    assert resolve_chat_template("chatml", byte_tok).end_token_id == byte_tok.eos_token_id
    tok = load_tokenizer("byte")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    template = resolve_chat_template("chatml", tok)
    assert template.end_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert template.stop_token_ids(tok) == [template.end_token_id, tok.eos_token_id]
    assert (
        torch.tensor(labelled_ids(Conversation((Message("user", "a"), Message("assistant", "b"))), template))[
            -1
        ]
        == template.end_token_id
    )
