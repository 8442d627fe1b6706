"""Alpaca, ShareGPT and OpenAI-messages rows, normalised to one conversation type.

Everything downstream (chat templates, label masks, packing) sees only `Conversation`: a list of
`Message(role, content)` with roles `system`, `user`, `assistant`, `tool_call` (an assistant turn
that calls a function) and `tool` (the function's result), plus the optional tools description.
Each check here raises `DataError` naming the example (file and index) and the field, because a
person fixing a 50k-row file needs exactly that.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmtrain.data.errors import DataError

ROLES = ("system", "user", "assistant", "tool_call", "tool")
# Role names as they appear in the wild (ShareGPT, OpenAI, LLaMA-Factory's tool-call sets).
DEFAULT_ROLE_NAMES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "function_call": "tool_call",
    "tool_call": "tool_call",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}
# Which role may follow which: a conversation is system? then user-led rounds, where an assistant
# reply may be preceded by tool calls, each answered by one or more tool results.
_NEXT = {
    "start": ("system", "user"),
    "system": ("user",),
    "user": ("assistant", "tool_call"),
    "assistant": ("user",),
    "tool_call": ("tool", "tool_call"),
    "tool": ("tool", "assistant", "tool_call"),
}


class EmptyReply(DataError):
    """An assistant turn with no text: it would train only the end-of-turn token, i.e. teach the
    model to answer nothing. Skipped as malformed (and counted apart), not kept."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    # JSON text describing the callable tools (ShareGPT `tools`, OpenAI `tools`), or None.
    tools: str | None = None


def detect_format(row: Any, fields: Mapping[str, str], where: str) -> str:
    """`alpaca`, `sharegpt` or `messages`, from which fields the (first) row has."""
    if isinstance(row, dict):
        if _name("conversations", fields) in row:
            return "sharegpt"
        if _name("messages", fields) in row:
            return "messages"
        if _name("instruction", fields) in row:
            return "alpaca"
    keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
    raise DataError(
        f"{where}: cannot tell the SFT format (fields: {keys}); expected `instruction`/`output` (alpaca), "
        "`conversations` (sharegpt) or `messages`; set data.sft.format, or map field names with data.sft.fields"
    )


def to_conversation(
    row: Any,
    fmt: str,
    where: str,
    fields: Mapping[str, str] | None = None,
    role_names: Mapping[str, str] | None = None,
) -> Conversation:
    """Normalise one row of format `fmt`; raises `DataError` naming `where` and the field."""
    fields = fields or {}
    roles = {**DEFAULT_ROLE_NAMES, **(role_names or {})}
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if fmt == "alpaca":
        conv = _alpaca(row, where, fields)
    elif fmt == "sharegpt":
        conv = _sharegpt(row, where, fields, roles)
    elif fmt in ("messages", "synthetic"):
        conv = _messages(row, where, fields, roles)
    else:
        raise DataError(
            f"{where}: unknown SFT format {fmt!r}; data.sft.format must be alpaca, sharegpt or messages"
        )
    check_roles(conv, where)
    return conv


def check_roles(conv: Conversation, where: str) -> None:
    """Roles in a trainable order, at least one assistant turn, and no unanswered final user turn."""
    if not conv.messages:
        raise DataError(f"{where}: empty conversation (no turns); remove the example")
    prev = "start"
    for i, msg in enumerate(conv.messages):
        if msg.role not in _NEXT[prev]:
            expected = " or ".join(_NEXT[prev])
            after = "at the start" if prev == "start" else f"after a {prev!r} turn"
            raise DataError(
                f"{where}: turn {i} has role {msg.role!r} {after}; expected {expected} "
                "(system first, then user/assistant alternating, tool results only after a tool call)"
            )
        prev = msg.role
    for i, msg in enumerate(conv.messages):
        if msg.role in ("assistant", "tool_call") and not msg.content.strip():
            raise EmptyReply(
                f"{where}: turn {i} is an empty {msg.role} reply, which would train only the end-of-turn "
                "token (teaching the model to answer nothing); fill it in or remove the example"
            )
    if not any(m.role in ("assistant", "tool_call") for m in conv.messages):
        raise DataError(f"{where}: no assistant turn, so nothing to train on; remove the example")
    if prev in ("user", "system", "tool"):
        raise DataError(
            f"{where}: the last turn ({len(conv.messages) - 1}, role {prev!r}) has no assistant reply; "
            "end every conversation with an assistant turn"
        )


def _name(canonical: str, fields: Mapping[str, str]) -> str:
    return fields.get(canonical, canonical)


def _text(value: Any, where: str, field: str, required: bool = True) -> str:
    """A string field, checked for bytes that were not UTF-8 (see llmtrain.data.sft.records)."""
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise DataError(f"{where}, field {field!r}: expected a string, got {got}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start].encode("utf-8", errors="surrogateescape")
        raise DataError(
            f"{where}, field {field!r}: not valid UTF-8 text (byte 0x{bad.hex()} at character {exc.start}); "
            "convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    return value


def _require_field(row: dict, canonical: str, fields: Mapping[str, str], where: str) -> Any:
    name = _name(canonical, fields)
    if name not in row:
        keys = ", ".join(map(str, row)) or "none"
        raise DataError(
            f"{where}: missing field {name!r} (fields present: {keys}); map it with data.sft.fields.{canonical}=NAME"
        )
    return row[name]


def _tools(row: dict, fields: Mapping[str, str], where: str) -> str | None:
    name = _name("tools", fields)
    tools = row.get(name)
    if tools is None or tools == "" or tools == []:
        return None
    if isinstance(tools, str):
        return _text(tools, where, name)
    return json.dumps(tools, ensure_ascii=False)


def _alpaca(row: dict, where: str, fields: Mapping[str, str]) -> Conversation:
    instruction = _text(
        _require_field(row, "instruction", fields, where), where, _name("instruction", fields)
    )
    output = _text(_require_field(row, "output", fields, where), where, _name("output", fields))
    extra = _text(row.get(_name("input", fields)), where, _name("input", fields), required=False)
    system = _text(row.get(_name("system", fields)), where, _name("system", fields), required=False)
    messages: list[Message] = [Message("system", system)] if system else []
    history_name = _name("history", fields)
    history = row.get(history_name) or []
    if not isinstance(history, list):
        raise DataError(f"{where}, field {history_name!r}: expected a list of [user, assistant] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise DataError(f"{where}, field {history_name!r}[{i}]: expected a [user, assistant] pair")
        messages.append(Message("user", _text(pair[0], where, f"{history_name}[{i}][0]")))
        messages.append(Message("assistant", _text(pair[1], where, f"{history_name}[{i}][1]")))
    prompt = f"{instruction}\n{extra}" if extra else instruction
    messages += [Message("user", prompt), Message("assistant", output)]
    return Conversation(tuple(messages), _tools(row, fields, where))


def _role(value: Any, roles: Mapping[str, str], where: str, field: str) -> str:
    if not isinstance(value, str) or value not in roles:
        known = ", ".join(sorted(roles))
        raise DataError(
            f"{where}, field {field!r}: unknown role {value!r} (known: {known}); map it with "
            "data.sft.role_names.NAME=user|assistant|system|tool|tool_call"
        )
    role = roles[value]
    if role not in ROLES:
        raise DataError(f"data.sft.role_names maps {value!r} to {role!r}; expected one of {', '.join(ROLES)}")
    return role


def _turn_list(row: dict, canonical: str, fields: Mapping[str, str], where: str) -> tuple[str, list]:
    name = _name(canonical, fields)
    turns = _require_field(row, canonical, fields, where)
    if not isinstance(turns, list):
        raise DataError(f"{where}, field {name!r}: expected a list of turns, got {type(turns).__name__}")
    if not turns:
        raise DataError(f"{where}, field {name!r}: empty conversation (no turns); remove the example")
    return name, turns


def _sharegpt(row: dict, where: str, fields: Mapping[str, str], roles: Mapping[str, str]) -> Conversation:
    name, turns = _turn_list(row, "conversations", fields, where)
    role_key, content_key = fields.get("role", "from"), fields.get("content", "value")
    system = _text(row.get(_name("system", fields)), where, _name("system", fields), required=False)
    messages: list[Message] = [Message("system", system)] if system else []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise DataError(
                f"{where}, field {name!r}[{i}]: expected an object with {role_key!r} and {content_key!r}"
            )
        role = _role(turn[role_key], roles, where, f"{name}[{i}].{role_key}")
        messages.append(Message(role, _text(turn[content_key], where, f"{name}[{i}].{content_key}")))
    return Conversation(tuple(messages), _tools(row, fields, where))


def _messages(row: dict, where: str, fields: Mapping[str, str], roles: Mapping[str, str]) -> Conversation:
    name, turns = _turn_list(row, "messages", fields, where)
    role_key, content_key = fields.get("role", "role"), fields.get("content", "content")
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        field = f"{name}[{i}]"
        if not isinstance(turn, dict) or role_key not in turn:
            raise DataError(f"{where}, field {field!r}: expected an object with {role_key!r}")
        role = _role(turn[role_key], roles, where, f"{field}.{role_key}")
        calls = turn.get("tool_calls")
        if role == "assistant" and calls:
            # OpenAI tool calls: one tool_call turn per call, content = {"name", "arguments"} JSON.
            for j, call in enumerate(calls):
                fn = call.get("function", call) if isinstance(call, dict) else None
                if not isinstance(fn, dict) or "name" not in fn:
                    raise DataError(f"{where}, field '{field}.tool_calls[{j}]': expected a function name")
                args = fn.get("arguments", {})
                if isinstance(args, str):
                    # Arguments that are not JSON stay the string they are.
                    with contextlib.suppress(json.JSONDecodeError):
                        args = json.loads(args)
                content = json.dumps({"name": fn["name"], "arguments": args}, ensure_ascii=False)
                messages.append(Message("tool_call", _text(content, where, f"{field}.tool_calls[{j}]")))
            continue
        content = turn.get(content_key)
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        messages.append(Message(role, _text(content, where, f"{field}.{content_key}")))
    return Conversation(tuple(messages), _tools(row, fields, where))
