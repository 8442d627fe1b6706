"""Alpaca / ShareGPT / messages rows become one conversation type, and every kind of bad row is
reported with its file, example index and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtrain.config import ConfigError, DataConfig, SFTConfig
from llmtrain.data.errors import DataError
from llmtrain.data.sft.formats import Message, detect_format, to_conversation
from llmtrain.data.sft.records import iter_records


def roles(conv) -> list[str]:
    return [m.role for m in conv.messages]


def test_alpaca_joins_instruction_and_input_and_keeps_system_and_history():
    row = {
        "instruction": "Translate",
        "input": "bonjour",
        "output": "hello",
        "system": "Be terse.",
        "history": [["hi", "hey"]],
    }
    conv = to_conversation(row, "alpaca", "f example 0")
    assert conv.messages == (
        Message("system", "Be terse."),
        Message("user", "hi"),
        Message("assistant", "hey"),
        Message("user", "Translate\nbonjour"),
        Message("assistant", "hello"),
    )


def test_alpaca_with_empty_input_is_the_instruction_alone():
    conv = to_conversation({"instruction": "Q", "input": "", "output": "A"}, "alpaca", "f example 0")
    assert conv.messages == (Message("user", "Q"), Message("assistant", "A"))


def test_sharegpt_tool_turns_map_to_tool_call_and_tool(shared_data: Path):
    rows = json.loads((shared_data / "sharegpt_toolcall_demo.json").read_text())
    conv = to_conversation(rows[0], "sharegpt", "demo example 0")
    assert roles(conv) == ["user", "assistant", "user", "tool_call", "tool", "assistant", "user", "assistant"]
    assert conv.tools is not None and "search_recipes" in conv.tools


def test_every_demo_row_normalises(shared_data: Path):
    for name, fmt in (("alpaca_en_demo.json", "alpaca"), ("sharegpt_toolcall_demo.json", "sharegpt")):
        rows = json.loads((shared_data / name).read_text())
        assert detect_format(rows[0], {}, name) == fmt
        for i, row in enumerate(rows):
            to_conversation(row, fmt, f"{name} example {i}")


def test_openai_messages_with_tool_calls():
    row = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"type": "function", "function": {"name": "get", "arguments": '{"city": "Oslo"}'}}
                ],
            },
            {"role": "tool", "content": "rain"},
            {"role": "assistant", "content": "It rains."},
        ]
    }
    conv = to_conversation(row, "messages", "f example 0")
    assert roles(conv) == ["user", "tool_call", "tool", "assistant"]
    assert json.loads(conv.messages[1].content) == {"name": "get", "arguments": {"city": "Oslo"}}


def test_field_and_role_names_are_mappable():
    row = {"dialog": [{"speaker": "asker", "text": "q"}, {"speaker": "answerer", "text": "a"}]}
    fields = {"conversations": "dialog", "role": "speaker", "content": "text"}
    conv = to_conversation(row, "sharegpt", "f example 0", fields, {"asker": "user", "answerer": "assistant"})
    assert conv.messages == (Message("user", "q"), Message("assistant", "a"))
    alpaca = to_conversation(
        {"prompt": "q", "response": "a"}, "alpaca", "x", {"instruction": "prompt", "output": "response"}
    )
    assert alpaca.messages == (Message("user", "q"), Message("assistant", "a"))


# ---- bad input: each names the file, the example index and the field ----

BAD_ROWS = {
    "missing field": ({"instruction": "q"}, "alpaca", "missing field 'output'"),
    "unknown role": (
        {"conversations": [{"from": "narrator", "value": "x"}]},
        "sharegpt",
        "unknown role 'narrator'",
    ),
    "roles out of order": (
        {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
        "sharegpt",
        "turn 0 has role 'assistant' at the start",
    ),
    "two users in a row": (
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
        "messages",
        "turn 1 has role 'user' after a 'user' turn",
    ),
    "tool result without call": (
        {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]},
        "messages",
        "turn 1 has role 'tool'",
    ),
    "empty conversation": ({"conversations": []}, "sharegpt", "empty conversation"),
    "no assistant turn": (
        {"messages": [{"role": "system", "content": "s"}]},
        "messages",
        "no assistant turn",
    ),
    "unanswered user turn": (
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
            ]
        },
        "messages",
        "has no assistant reply",
    ),
    "non-string content": ({"instruction": "q", "output": 3}, "alpaca", "field 'output': expected a string"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows_name_file_example_and_problem(case: str):
    row, fmt, expected = BAD_ROWS[case]
    with pytest.raises(DataError) as err:
        to_conversation(row, fmt, "data/train.jsonl example 7")
    assert "data/train.jsonl example 7" in str(err.value)
    assert expected in str(err.value)


def test_conversation_without_any_reply_has_no_assistant_turn():
    row = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}]}
    with pytest.raises(DataError, match="no assistant turn"):
        to_conversation(row, "sharegpt", "f example 0")


def test_non_utf8_bytes_are_reported_with_example_and_field(tmp_path: Path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps({"instruction": "q", "output": "a"}).encode()
    bad = b'{"instruction": "caf\xe9", "output": "a"}'
    path.write_bytes(good + b"\n" + bad + b"\n")
    records = list(iter_records(DataConfig(kind="sft", sft=SFTConfig(format="alpaca"), path=str(path))))
    to_conversation(records[0].row, "alpaca", records[0].where)
    with pytest.raises(DataError) as err:
        to_conversation(records[1].row, "alpaca", records[1].where)
    message = str(err.value)
    assert f"{path} example 1 (line 2)" in message and "field 'instruction'" in message
    assert "not valid UTF-8" in message and "0xe9" in message


def test_unknown_format_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="data.sft.format"):
        DataConfig(kind="sft", sft=SFTConfig(format="xml"), path="x.json")


def test_undetectable_format_says_which_fields_it_saw():
    with pytest.raises(DataError, match="cannot tell the SFT format .*fields: prompt"):
        detect_format({"prompt": "q"}, {}, "f example 0")


def test_packing_requires_document_masking():
    with pytest.raises(ConfigError, match="data.document_masking"):
        DataConfig(kind="sft", sft=SFTConfig(format="synthetic", packing=True), document_masking=False)


def test_parquet_and_saved_hf_datasets_are_read_as_rows(tmp_path: Path):
    import datasets

    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(3)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for path in (str(tmp_path / "d.parquet"), f"hf:{tmp_path / 'saved'}"):
        records = list(iter_records(DataConfig(kind="sft", sft=SFTConfig(format="alpaca"), path=path)))
        assert [r.row for r in records] == rows and records[2].where.endswith("example 2")
