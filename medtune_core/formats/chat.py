"""Chat formats: alpaca, ShareGPT, OpenAI messages and question/answer pairs, all to :class:`Conversation`."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from medtune_core.errors import FieldError
from medtune_core.formats.base import (
    HINT_PREFIX,
    RecordFormat,
    expect_dict,
    public_extra,
    register,
    split_known,
)
from medtune_core.formats.records import (
    Conversation,
    Message,
    RecordKind,
    check_turn_order,
    require_text,
)

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}
SHAREGPT_FROM = {"user": "human", "assistant": "gpt", "system": "system"}


def json_text(value: Any) -> str:
    """Render a structured value as compact, human-readable JSON (Chinese kept as characters)."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _as_content(value: Any, field: str) -> str:
    """Alpaca allows JSON objects as input/output (the synthesis seed writes them); strings pass through."""
    if isinstance(value, (dict, list)):
        if not value:
            raise FieldError(field, "empty content")
        return json_text(value)
    return require_text(value, field)


@register
class AlpacaFormat(RecordFormat):
    """``{"instruction", "input"?, "output", "system"?, "history"?}``; input/output may be JSON objects."""

    name = "alpaca"
    kind = RecordKind.CHAT
    priority = 20
    description = "alpaca {instruction, input, output}; input/output may be JSON objects"
    KNOWN: ClassVar[frozenset[str]] = frozenset({"instruction", "input", "output", "system", "history"})

    def matches(self, row: dict[str, Any]) -> bool:
        return "instruction" in row and "output" in row

    def parse(self, row: Any, *, source: str | None = None) -> Conversation:
        row = expect_dict(row)
        instruction = require_text(row.get("instruction"), "instruction")
        raw_input = row.get("input")
        extra = split_known(row, self.KNOWN)
        user = instruction
        if raw_input not in (None, "", {}, []):
            input_text = _as_content(raw_input, "input")
            user = f"{instruction}\n{input_text}"
            extra[HINT_PREFIX + "alpaca_input"] = raw_input
        elif "input" not in row:
            extra[HINT_PREFIX + "alpaca_no_input"] = True
        else:
            extra[HINT_PREFIX + "alpaca_input"] = raw_input
        output = row.get("output")
        assistant = _as_content(output, "output")
        if isinstance(output, (dict, list)):
            extra[HINT_PREFIX + "alpaca_output"] = output
        else:
            extra[HINT_PREFIX + "alpaca_output_text"] = True
        messages: list[Message] = []
        if row.get("system") is not None:
            messages.append(Message("system", require_text(row["system"], "system")))
        history = row.get("history") or []
        if not isinstance(history, list):
            raise FieldError("history", f"expected a list of [question, answer] pairs, got {type(history).__name__}")
        for i, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise FieldError(f"history[{i}]", "expected a [question, answer] pair")
            messages.append(Message("user", require_text(pair[0], f"history[{i}][0]")))
            messages.append(Message("assistant", require_text(pair[1], f"history[{i}][1]")))
        messages += [Message("user", user), Message("assistant", assistant)]
        return Conversation(messages, extra)

    def dump(self, record: Conversation) -> dict[str, Any]:
        turns = record.turns
        if len(turns) < 2 or turns[-1].role != "assistant":
            raise FieldError("messages", "alpaca needs a final user turn followed by an assistant answer")
        row: dict[str, Any] = {}
        if record.system is not None:
            row["system"] = record.system
        user, assistant = turns[-2].content, turns[-1].content
        instruction, inp = _split_alpaca_user(user, record.extra)
        row["instruction"] = instruction
        if not record.extra.get(HINT_PREFIX + "alpaca_no_input"):
            row["input"] = inp
        row["output"] = _alpaca_output(assistant, record.extra)
        if len(turns) > 2:
            row["history"] = [[turns[i].content, turns[i + 1].content] for i in range(0, len(turns) - 2, 2)]
        row.update(public_extra(record.extra))
        return row


def _json_object(text: str) -> dict[str, Any] | None:
    """``text`` parsed as a JSON object, or None (structured alpaca fields travel as JSON text in chat)."""
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _split_alpaca_user(user: str, extra: dict[str, Any]) -> tuple[str, Any]:
    """Recover (instruction, input) from a user turn: exactly from the parse hint, else a trailing JSON object."""
    hint = extra.get(HINT_PREFIX + "alpaca_input")
    if hint not in (None, "", {}, []):
        rendered = "\n" + _as_content(hint, "input")
        if user.endswith(rendered):
            return user[: -len(rendered)], hint
    elif HINT_PREFIX + "alpaca_input" not in extra and "\n" in user:
        head, tail = user.rsplit("\n", 1)
        obj = _json_object(tail)
        if obj is not None and head.strip():
            return head, obj
    return user, ""


def _alpaca_output(assistant: str, extra: dict[str, Any]) -> Any:
    """The output field: the parsed object when the source had one (or, coming from chat, the text is one)."""
    hint = extra.get(HINT_PREFIX + "alpaca_output")
    if hint is not None and _as_content(hint, "output") == assistant:
        return hint
    if extra.get(HINT_PREFIX + "alpaca_output_text"):
        return assistant
    obj = _json_object(assistant)
    return obj if obj is not None else assistant


@register
class ShareGPTFormat(RecordFormat):
    """``{"conversations": [{"from": "human"|"gpt", "value"}], "system_prompt"?}`` (MedicalGPT, LLaMA-Factory)."""

    name = "sharegpt"
    kind = RecordKind.CHAT
    priority = 20
    description = "ShareGPT {conversations: [{from, value}], system_prompt?}"
    KNOWN: ClassVar[frozenset[str]] = frozenset({"conversations", "system_prompt"})

    def matches(self, row: dict[str, Any]) -> bool:
        return isinstance(row.get("conversations"), list) and "chosen" not in row

    def parse(self, row: Any, *, source: str | None = None) -> Conversation:
        row = expect_dict(row)
        extra = split_known(row, self.KNOWN)
        messages = parse_sharegpt_turns(row.get("conversations"), "conversations")
        if messages and messages[0].role == "system":
            extra[HINT_PREFIX + "system_in_list"] = True
        system_prompt = row.get("system_prompt")
        if system_prompt not in (None, ""):
            if messages and messages[0].role == "system":
                raise FieldError("system_prompt", "given twice: also as the first conversation turn")
            messages.insert(0, Message("system", require_text(system_prompt, "system_prompt")))
        elif "system_prompt" in row:
            extra[HINT_PREFIX + "empty_system_prompt"] = system_prompt
        check_turn_order(messages, "conversations")
        return Conversation(messages, extra)

    def dump(self, record: Conversation) -> dict[str, Any]:
        row: dict[str, Any] = {}
        in_list = record.extra.get(HINT_PREFIX + "system_in_list", False)
        turns = record.messages if in_list else record.turns
        row["conversations"] = [{"from": SHAREGPT_FROM[m.role], "value": m.content} for m in turns]
        if record.system is not None and not in_list:
            row["system_prompt"] = record.system
        elif HINT_PREFIX + "empty_system_prompt" in record.extra:
            row["system_prompt"] = record.extra[HINT_PREFIX + "empty_system_prompt"]
        row.update(public_extra(record.extra))
        return row


def parse_sharegpt_turns(turns: Any, where: str) -> list[Message]:
    """Parse a ShareGPT ``[{from, value}]`` list (roles checked by the caller)."""
    if turns is None:
        raise FieldError(where, "missing or null")
    if not isinstance(turns, list):
        raise FieldError(where, f"expected a list, got {type(turns).__name__}")
    if not turns:
        raise FieldError(where, "empty list")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise FieldError(f"{where}[{i}]", f"expected an object, got {type(turn).__name__}")
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            raise FieldError(f"{where}[{i}].from", f"unknown speaker {speaker!r} (expected human, gpt or system)")
        messages.append(Message(SHAREGPT_ROLES[speaker], require_text(turn.get("value"), f"{where}[{i}].value")))
    return messages


def parse_openai_messages(items: Any, where: str) -> list[Message]:
    """Parse an OpenAI ``[{role, content}]`` list (roles checked by the caller)."""
    if items is None:
        raise FieldError(where, "missing or null")
    if not isinstance(items, list):
        raise FieldError(where, f"expected a list, got {type(items).__name__}")
    if not items:
        raise FieldError(where, "empty list")
    messages = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise FieldError(f"{where}[{i}]", f"expected an object, got {type(item).__name__}")
        role = item.get("role")
        if role not in ("system", "user", "assistant"):
            raise FieldError(f"{where}[{i}].role", f"unknown role {role!r} (expected system, user or assistant)")
        messages.append(Message(role, require_text(item.get("content"), f"{where}[{i}].content")))
    return messages


@register
class MessagesFormat(RecordFormat):
    """OpenAI chat ``{"messages": [{"role", "content"}]}`` (also Bailian's SFT format)."""

    name = "messages"
    kind = RecordKind.CHAT
    priority = 20
    description = "OpenAI {messages: [{role, content}]}"
    KNOWN: ClassVar[frozenset[str]] = frozenset({"messages"})

    def matches(self, row: dict[str, Any]) -> bool:
        return isinstance(row.get("messages"), list)

    def parse(self, row: Any, *, source: str | None = None) -> Conversation:
        row = expect_dict(row)
        messages = parse_openai_messages(row.get("messages"), "messages")
        check_turn_order(messages, "messages")
        return Conversation(messages, split_known(row, self.KNOWN))

    def dump(self, record: Conversation) -> dict[str, Any]:
        row: dict[str, Any] = {"messages": [{"role": m.role, "content": m.content} for m in record.messages]}
        row.update(public_extra(record.extra))
        return row


class _PairFormat(RecordFormat):
    """A single question/answer pair under two fixed keys."""

    kind = RecordKind.CHAT
    priority = 10
    question_key: str
    answer_key: str

    def matches(self, row: dict[str, Any]) -> bool:
        return self.question_key in row and self.answer_key in row and "options" not in row

    def parse(self, row: Any, *, source: str | None = None) -> Conversation:
        row = expect_dict(row)
        q = require_text(row.get(self.question_key), self.question_key)
        a = require_text(row.get(self.answer_key), self.answer_key)
        extra = split_known(row, {self.question_key, self.answer_key})
        return Conversation([Message("user", q), Message("assistant", a)], extra)

    def dump(self, record: Conversation) -> dict[str, Any]:
        turns = record.turns
        if record.system is not None or len(turns) != 2:
            raise FieldError("messages", f"{self.name} holds exactly one question and one answer, no system prompt")
        row = {self.question_key: turns[0].content, self.answer_key: turns[1].content}
        row.update(public_extra(record.extra))
        return row


@register
class QAFormat(_PairFormat):
    """``{"question", "answer"}`` (MedicalGPT's GRPO sample)."""

    name = "qa"
    description = "question/answer {question, answer}"
    question_key, answer_key = "question", "answer"


@register
class QAZhFormat(_PairFormat):
    """``{"问", "答"}`` (MedicalGPT's RAG corpus)."""

    name = "qa_zh"
    description = "question/answer {问, 答}"
    question_key, answer_key = "问", "答"
