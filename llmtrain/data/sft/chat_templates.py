"""Chat templates: a conversation to token ids, cut into segments that are trained on or not.

Both implementations render the whole conversation as one text, remember the character span of
every piece (prompt, reply, end token), tokenize the text once and give each token to its span
(`llmtrain.data.sft.spans`). So the ids are the ids a server computes from the same text
(`apply_chat_template(tokenize=True)` for the tokenizer's own template), with no stray "▁" where a
sentencepiece tokenizer would have started a new call at each turn. Training, evaluation and
`launch/generate.py` all go through `ChatTemplate`, so a prompt is tokenized identically everywhere.

Two implementations of one interface:
- `NamedTemplate` (chatml, llama3, alpaca): ours, for tokenizers without a chat template. A reply
  ends with the template's end-of-turn token when the tokenizer has it as one token (`<|im_end|>`,
  `<|eot_id|>`), else with the tokenizer's eos, so generation can always stop on one id. Text in
  message content that spells a special token ("</s>") stays text, so data cannot inject one.
- `TokenizerTemplate`: the tokenizer's own Jinja `chat_template`. Replies are located by rendering
  each growing prefix of the conversation (with and without the generation prompt): the text a
  reply adds is its span. Not `return_assistant_tokens_mask`: it needs `{% generation %}` markers,
  which most shipped templates (Llama 3, Qwen, Mistral) do not have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtrain.data.errors import DataError
from llmtrain.data.sft.formats import Conversation, Message
from llmtrain.data.sft.spans import Segment, Span, encode_spans

__all__ = ["ChatTemplate", "Segment", "TemplateError", "resolve_chat_template"]


class TemplateError(DataError):
    """The chat template cannot work for this data at all (not one malformed example): stop the run."""


@dataclass(frozen=True)
class NamedSpec:
    """One of our templates. `{content}` is the message text; `{end}` the end-of-turn token."""

    system: str
    user: str
    # Opens an assistant turn: the generation prompt. Never trained on.
    assistant_prompt: str
    # The reply itself: trained on (including its end token).
    assistant: str
    # Between a reply and the next turn; not trained on.
    after_assistant: str
    # A function call made by the assistant (trained on), and the function's result (not).
    tool_call: str
    tool: str
    # Appended to the system message when the example describes tools.
    tools_in_system: str
    # Preferred end-of-turn token; the tokenizer's eos when it lacks it as a single token.
    end_token: str | None = None
    default_system: str | None = None


NAMED_TEMPLATES: dict[str, NamedSpec] = {
    "chatml": NamedSpec(
        system="<|im_start|>system\n{content}{end}\n",
        user="<|im_start|>user\n{content}{end}\n",
        assistant_prompt="<|im_start|>assistant\n",
        assistant="{content}{end}",
        after_assistant="\n",
        tool_call="<tool_call>\n{content}\n</tool_call>{end}",
        tool="<|im_start|>tool\n<tool_response>\n{content}\n</tool_response>{end}\n",
        tools_in_system="\n\n# Tools\n\nYou may call functions. Their signatures:\n<tools>\n{content}\n</tools>",
        end_token="<|im_end|>",
    ),
    "llama3": NamedSpec(
        system="<|start_header_id|>system<|end_header_id|>\n\n{content}{end}",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}{end}",
        assistant_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant="{content}{end}",
        after_assistant="",
        tool_call="{content}{end}",
        tool="<|start_header_id|>ipython<|end_header_id|>\n\n{content}{end}",
        tools_in_system="\n\nYou have access to these functions; call one with a JSON object:\n{content}",
        end_token="<|eot_id|>",
    ),
    "alpaca": NamedSpec(
        system="{content}\n\n",
        user="### Instruction:\n{content}\n\n",
        assistant_prompt="### Response:\n",
        assistant="{content}{end}",
        after_assistant="\n\n",
        tool_call="Action: {content}{end}",
        tool="### Observation:\n{content}\n\n",
        tools_in_system="\n\nAvailable functions:\n{content}",
        default_system=(
            "Below is an instruction that describes a task. Write a response that appropriately completes "
            "the request."
        ),
    ),
}


class ChatTemplate:
    """A template bound to a tokenizer."""

    name: str
    # The token that closes an assistant reply (None: the template adds none, which the audit rejects).
    end_token_id: int | None

    def encode(self, conv: Conversation) -> list[Segment]:
        """The whole conversation; assistant replies (and tool calls) are the trainable segments."""
        raise NotImplementedError

    def encode_prompt(self, conv: Conversation) -> list[int]:
        """Token ids that ask for the next assistant reply: `conv` (ending in a user or tool turn)
        followed by the generation prompt. Equals the prefix `encode` produces before that reply."""
        raise NotImplementedError

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        ids = [i for i in (self.end_token_id, tokenizer.eos_token_id) if i is not None]
        return list(dict.fromkeys(ids))


# Written next to a run's tokenizer (and so copied into every export): which template and system
# prompt the model was fine-tuned with, so `launch/generate.py` formats prompts the same way.
CHAT_SETTINGS_FILE = "llmtrain_chat.json"


def save_chat_settings(folder: Path, chat_template: str, system_prompt: str | None) -> None:
    payload = {"chat_template": chat_template, "system_prompt": system_prompt}
    (Path(folder) / CHAT_SETTINGS_FILE).write_text(json.dumps(payload, indent=2) + "\n")


def load_chat_settings(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / CHAT_SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def resolve_chat_template(name: str, tokenizer: Any, system_prompt: str | None = None) -> ChatTemplate:
    """`data.sft.chat_template` for this tokenizer: auto = its own template when it has one, else chatml."""
    own = getattr(tokenizer, "chat_template", None)
    if name == "tokenizer" or (name == "auto" and own):
        if not own:
            raise DataError(
                "data.sft.chat_template=tokenizer but the tokenizer has no chat_template; choose one of "
                f"{', '.join(NAMED_TEMPLATES)} (or auto)"
            )
        return TokenizerTemplate(tokenizer, system_prompt)
    return NamedTemplate("chatml" if name == "auto" else name, tokenizer, system_prompt)


def _single_token_id(tokenizer: Any, token: str | None) -> int | None:
    if token is None:
        return None
    ids = tokenizer(token, add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else None


class _Rendering:
    """Text being rendered, the spans closed so far and the message-content ranges in it."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.spans: list[Span] = []
        self.protected: list[tuple[int, int]] = []

    def add(self, text: str, protect: bool = False) -> None:
        if protect and text:
            self.protected.append((self.pos, self.pos + len(text)))
        self.parts.append(text)
        self.pos += len(text)

    def close_span(self, trainable: bool) -> None:
        start = self.spans[-1].end if self.spans else 0
        self.spans.append(Span(start, self.pos, trainable))

    @property
    def text(self) -> str:
        return "".join(self.parts)


class NamedTemplate(ChatTemplate):
    def __init__(self, name: str, tokenizer: Any, system_prompt: str | None = None) -> None:
        if name not in NAMED_TEMPLATES:
            raise DataError(
                f"data.sft.chat_template={name!r} is unknown; choose one of {', '.join(NAMED_TEMPLATES)}"
            )
        self.name = name
        self.spec = NAMED_TEMPLATES[name]
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt if system_prompt is not None else self.spec.default_system
        self.end_token_id = _single_token_id(tokenizer, self.spec.end_token)
        if self.end_token_id is None:
            self.end_token_id = tokenizer.eos_token_id
        # Special tokens are written into the text as their token strings; tokenized, each is one id.
        self.end_text = tokenizer.convert_ids_to_tokens(self.end_token_id)
        self.bos_text = tokenizer.bos_token if tokenizer.bos_token_id is not None else ""

    def _fill(self, r: _Rendering, template: str, content: str) -> None:
        for k, part in enumerate(template.split("{end}")):
            if k:
                r.add(self.end_text)
            before, sep, after = part.partition("{content}")
            r.add(before)
            if sep:
                r.add(content, protect=True)
                r.add(after)

    def _system(self, conv: Conversation) -> list[Message]:
        msgs = list(conv.messages)
        has_system = bool(msgs) and msgs[0].role == "system"
        system = msgs[0].content if has_system else self.system_prompt
        if conv.tools:
            tools = self.spec.tools_in_system.replace("{content}", conv.tools)
            system = system + tools if system else tools.lstrip()
        rest = msgs[1:] if has_system else msgs
        return ([Message("system", system)] if system else []) + rest

    def render(self, conv: Conversation, generation: bool = False) -> _Rendering:
        """The conversation as one text, with a span per template piece (replies trainable)."""
        r = _Rendering()
        s = self.spec
        r.add(self.bos_text)
        r.close_span(False)
        for msg in self._system(conv):
            if msg.role in ("assistant", "tool_call"):
                self._fill(r, s.assistant_prompt, "")
                r.close_span(False)
                self._fill(r, s.assistant if msg.role == "assistant" else s.tool_call, msg.content)
                r.close_span(True)
                self._fill(r, s.after_assistant, "")
            else:
                self._fill(r, {"system": s.system, "user": s.user, "tool": s.tool}[msg.role], msg.content)
            r.close_span(False)
        if generation:
            self._fill(r, s.assistant_prompt, "")
            r.close_span(False)
        return r

    def encode(self, conv: Conversation, generation: bool = False) -> list[Segment]:
        r = self.render(conv, generation)
        return encode_spans(self.tokenizer, r.text, r.spans, r.protected)

    def encode_prompt(self, conv: Conversation) -> list[int]:
        return [i for seg in self.encode(conv, generation=True) for i in seg.ids]


class TokenizerTemplate(ChatTemplate):
    name = "tokenizer"

    def __init__(self, tokenizer: Any, system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.special_ids = set(tokenizer.all_special_ids)
        # The end-of-turn token is whatever special token closes a reply in a probe conversation
        # (with a system message too, for templates that insist on one).
        reply: list[Segment] = []
        for system in ((), (Message("system", "You are a helpful assistant."),)):
            probe = Conversation((*system, Message("user", "1 + 1?"), Message("assistant", "2")))
            try:
                reply = [
                    s for s in self.encode(probe, "the chat template's probe conversation") if s.trainable
                ]
                break
            except TemplateError:
                raise
            except DataError:
                continue
        self.end_token_id = reply[-1].ids[-1] if reply and reply[-1].ids[-1] in self.special_ids else None

    def _hf_messages(self, conv: Conversation) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.system_prompt and (not conv.messages or conv.messages[0].role != "system"):
            out.append({"role": "system", "content": self.system_prompt})
        for m in conv.messages:
            if m.role == "tool_call":
                try:
                    call = json.loads(m.content)
                    fn = {"name": call["name"], "arguments": call.get("arguments", {})}
                    out.append(
                        {
                            "role": "assistant",
                            "content": "",
                            "tool_calls": [{"type": "function", "function": fn}],
                        }
                    )
                except (json.JSONDecodeError, KeyError, TypeError):
                    out.append({"role": "assistant", "content": m.content})
            else:
                out.append({"role": m.role, "content": m.content})
        return out

    def _render(self, messages: list[dict[str, Any]], tools: Any, generation: bool, where: str) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=generation
            )
        except Exception as exc:  # Jinja raise_exception / TemplateError / KeyError inside the template
            raise DataError(
                f"{where}: the tokenizer's chat template rejected the conversation ({exc}). If it needs a "
                "system message the data lacks, set data.sft.system_prompt; or pick data.sft.chat_template="
                f"{'|'.join(NAMED_TEMPLATES)}"
            ) from exc

    def _tools(self, conv: Conversation) -> Any:
        if not conv.tools:
            return None
        try:
            tools = json.loads(conv.tools)
        except json.JSONDecodeError:
            return None
        return tools if isinstance(tools, list) else [tools]

    def encode(
        self, conv: Conversation, where: str = "conversation", generation: bool = False
    ) -> list[Segment]:
        msgs, tools = self._hf_messages(conv), self._tools(conv)
        spans: list[Span] = []
        done = ""
        for k, msg in enumerate(msgs):
            if msg["role"] != "assistant":
                continue
            prompt = self._render(msgs[:k], tools, True, where)
            full = self._render(msgs[: k + 1], tools, False, where)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise TemplateError(
                    f"{where}: the tokenizer's chat template does not render the conversation turn by turn "
                    "(a longer prefix changes earlier text), so assistant replies cannot be located; set "
                    f"data.sft.chat_template to one of {', '.join(NAMED_TEMPLATES)}"
                )
            spans += [Span(len(done), len(prompt), False), Span(len(prompt), len(full), True)]
            done = full
        rest = self._render(msgs, tools, generation, where)
        if not rest.startswith(done):
            raise TemplateError(f"{where}: the tokenizer's chat template does not render turn by turn")
        spans.append(Span(len(done), len(rest), False))
        # The whole render tokenized once: the ids of apply_chat_template(tokenize=True).
        segments: list[Segment] = []
        for seg in encode_spans(self.tokenizer, rest, spans):
            if not seg.trainable:
                segments.append(seg)
                continue
            # Train up to and including the reply's last special token (its end of turn); text the
            # template puts after it (a newline) belongs to the next prompt.
            ids = seg.ids
            cut = max((i + 1 for i, t in enumerate(ids) if t in self.special_ids), default=len(ids))
            segments += [Segment(ids[:cut], True), Segment(ids[cut:], False)]
        return [s for s in segments if s.ids]

    def encode_prompt(self, conv: Conversation) -> list[int]:
        return [i for s in self.encode(conv, "prompt", generation=True) for i in s.ids]
