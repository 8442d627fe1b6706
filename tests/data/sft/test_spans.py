"""Rendering once (`llmtrain/data/sft/spans.py`): our ids are the ids a server computes from the same
conversation — `apply_chat_template(tokenize=True)` for a tokenizer's own template, the rendered text
tokenized once for our templates — on every example of every shipped SFT file, and a sentencepiece
tokenizer gets no stray "▁" at turn boundaries."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtrain.config import DataConfig, SFTConfig
from llmtrain.data.sft.chat_templates import NAMED_TEMPLATES, NamedTemplate, resolve_chat_template
from llmtrain.data.sft.formats import Conversation
from llmtrain.data.sft.prepare import iter_conversations
from llmtrain.data.sft.tokenize import SFTAudit
from llmtrain.data.tokenizer.load import load_tokenizer

# Qwen 2.5's layout (system with a tools block, tool calls as JSON in <tool_call>, tool results as
# a user turn), written for this test: a tokenizer-owned template with tools and tool calls.
QWEN_LIKE_JINJA = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{% elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}"
    "{% elif m['role'] == 'assistant' and m['tool_calls'] %}<|im_start|>assistant\n"
    "{% for c in m['tool_calls'] %}<tool_call>\n"
    '{{ {"name": c["function"]["name"], "arguments": c["function"]["arguments"]} | tojson }}'
    "\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif m['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m['content'] }}\n"
    "</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SHIPPED = {
    "alpaca_en_demo": "alpaca_en_demo.json",
    "sharegpt_toolcall_demo": "sharegpt_toolcall_demo.json",
    "sft_synthetic": None,
}


def shipped_conversations(shared_data: Path, name: str) -> list[Conversation]:
    file = SHIPPED[name]
    if file is None:
        cfg = DataConfig(kind="sft", sft=SFTConfig(format="synthetic", synthetic_examples=300))
    else:
        cfg = DataConfig(kind="sft", path=str(shared_data / file), sft=SFTConfig(format="auto"))
    return [conv for _, _, conv in iter_conversations(cfg, SFTAudit())]


@pytest.fixture(scope="module")
def llama2_tok(shared_data: Path):
    return load_tokenizer(str(shared_data / "llama2_tokenizer.model"))


@pytest.fixture(scope="module")
def llama2_with_chat_template(shared_data: Path):
    tok = load_tokenizer(str(shared_data / "llama2_tokenizer.model"))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = QWEN_LIKE_JINJA
    return tok


def flat(segments) -> list[int]:
    return [i for s in segments for i in s.ids]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_ids_equal_apply_chat_template_on_every_shipped_example(shared_data, llama2_with_chat_template, name):
    tok = llama2_with_chat_template
    template = resolve_chat_template("auto", tok)
    assert template.name == "tokenizer"
    convs = shipped_conversations(shared_data, name)
    differ = []
    for k, conv in enumerate(convs):
        hf = tok.apply_chat_template(template._hf_messages(conv), tools=template._tools(conv), tokenize=True)[
            "input_ids"
        ]
        if flat(template.encode(conv)) != hf:
            differ.append(k)
    assert not differ, (
        f"{len(differ)} of {len(convs)} examples differ from apply_chat_template, e.g. {differ[:5]}"
    )
    # Replies (and tool calls) are trained through their <|im_end|>, prompts never.
    end = tok.convert_tokens_to_ids("<|im_end|>")
    segments = template.encode(convs[0])
    assert all(s.ids[-1] == end for s in segments if s.trainable)
    replies = sum(m.role in ("assistant", "tool_call") for m in convs[0].messages)
    assert sum(s.trainable for s in segments) == replies


@pytest.mark.parametrize("template_name", ["tokenizer", "chatml"])
def test_tool_calls_are_trained_as_the_template_writes_them(
    shared_data, llama2_with_chat_template, template_name
):
    tok = llama2_with_chat_template
    template = resolve_chat_template(template_name, tok)
    conv = next(c for c in shipped_conversations(shared_data, "sharegpt_toolcall_demo") if c.tools)
    text = tok.decode(flat(template.encode(conv)), skip_special_tokens=False)
    assert "<tool_call>\n{" in text and "}\n</tool_call>" in text
    assert "<tool_call>\n {" not in text and " \n</tool_call>" not in text


@pytest.mark.parametrize("tokenizer", ["byte", "llama2"])
@pytest.mark.parametrize("template_name", sorted(NAMED_TEMPLATES))
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_builtin_templates_give_the_ids_of_their_text_tokenized_once(
    shared_data, llama2_tok, tokenizer, template_name, name
):
    tok = llama2_tok if tokenizer == "llama2" else load_tokenizer("byte")
    template = resolve_chat_template(template_name, tok)
    assert isinstance(template, NamedTemplate)
    convs = shipped_conversations(shared_data, name)
    differ = [
        k
        for k, conv in enumerate(convs)
        if flat(template.encode(conv)) != tok(template.render(conv).text, add_special_tokens=False).input_ids
    ]
    assert not differ, f"{len(differ)} of {len(convs)} examples differ, e.g. {differ[:5]}"


def independent_text(conv: Conversation, template: NamedTemplate, tok) -> str:
    """The conversation as the template's spec writes it, assembled here without the template code."""
    spec, end = template.spec, tok.convert_ids_to_tokens(template.end_token_id)
    msgs = list(conv.messages)
    system = msgs.pop(0).content if msgs and msgs[0].role == "system" else template.system_prompt
    if conv.tools:
        tools = spec.tools_in_system.replace("{content}", conv.tools)
        system = system + tools if system else tools.lstrip()
    text = tok.bos_token
    if system:
        text += spec.system.replace("{content}", system)
    for m in msgs:
        if m.role in ("assistant", "tool_call"):
            body = spec.assistant if m.role == "assistant" else spec.tool_call
            text += spec.assistant_prompt + body.replace("{content}", m.content) + spec.after_assistant
        else:
            text += {"user": spec.user, "tool": spec.tool}[m.role].replace("{content}", m.content)
    return text.replace("{end}", end)


@pytest.mark.parametrize("template_name", sorted(NAMED_TEMPLATES))
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_no_stray_space_piece_at_turn_boundaries_with_sentencepiece(
    shared_data, llama2_tok, template_name, name
):
    """A "▁" piece glued in front of a special token, or a "▁word" piece after a newline, appears
    exactly as often as the text has a space there (the per-turn tokenization added one at every turn)."""
    tok = llama2_tok
    template = resolve_chat_template(template_name, tok)
    special = set(tok.all_special_ids)
    space_before_special = [" " + t for t in tok.all_special_tokens]
    bad = []
    for k, conv in enumerate(shipped_conversations(shared_data, name)):
        ids = flat(template.encode(conv))
        pieces = tok.convert_ids_to_tokens(ids)
        text = independent_text(conv, template, tok)
        glued = sum(p == "▁" and i in special for p, i in zip(pieces, ids[1:]))
        after_newline = sum(a == "<0x0A>" and b.startswith("▁") for a, b in zip(pieces, pieces[1:]))
        if glued != sum(text.count(s) for s in space_before_special) or after_newline != text.count("\n "):
            bad.append(k)
    assert not bad, f"stray '▁' in {len(bad)} examples, e.g. {bad[:5]}"
