"""Preference formats (DPO, ORPO, KTO, reward modelling) in their three public shapes."""

from __future__ import annotations

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
from medtune_core.formats.chat import SHAREGPT_FROM, parse_openai_messages, parse_sharegpt_turns
from medtune_core.formats.records import (
    Message,
    PreferencePair,
    RecordKind,
    check_turn_order,
    require_text,
)


def _check_prompt(messages: list[Message], where: str) -> None:
    check_turn_order(messages, where, must_end_with_assistant=False)
    if messages[-1].role != "user":
        raise FieldError(where, "roles out of order: the prompt must end with a user turn")


def _answer(value: Any, field: str) -> str:
    """A chosen/rejected answer: a string, or TRL's conversational ``[{role: assistant, content}]``."""
    if isinstance(value, list):
        msgs = parse_openai_messages(value, field)
        if len(msgs) != 1 or msgs[0].role != "assistant":
            raise FieldError(field, "expected exactly one assistant message")
        return msgs[0].content
    return require_text(value, field)


@register
class PromptChosenRejectedFormat(RecordFormat):
    """``{"prompt", "chosen", "rejected", "system"?}``; TRL's conversational lists are accepted too."""

    name = "preference"
    kind = RecordKind.PREFERENCE
    priority = 30
    description = "preference {prompt, chosen, rejected}"
    KNOWN: ClassVar[frozenset[str]] = frozenset({"prompt", "chosen", "rejected", "system"})

    def matches(self, row: dict[str, Any]) -> bool:
        return {"prompt", "chosen", "rejected"} <= row.keys()

    def parse(self, row: Any, *, source: str | None = None) -> PreferencePair:
        row = expect_dict(row)
        extra = split_known(row, self.KNOWN)
        prompt = row.get("prompt")
        if isinstance(prompt, list):
            messages = parse_openai_messages(prompt, "prompt")
            extra[HINT_PREFIX + "conversational"] = True
        else:
            messages = [Message("user", require_text(prompt, "prompt"))]
        if row.get("system") is not None:
            if messages[0].role == "system":
                raise FieldError("system", "given twice: also inside the prompt")
            messages.insert(0, Message("system", require_text(row["system"], "system")))
        _check_prompt(messages, "prompt")
        if isinstance(row.get("chosen"), list):
            extra[HINT_PREFIX + "conversational"] = True
        return PreferencePair(
            messages, _answer(row.get("chosen"), "chosen"), _answer(row.get("rejected"), "rejected"), extra
        )

    def dump(self, record: PreferencePair) -> dict[str, Any]:
        prompt = record.prompt
        conversational = (
            record.extra.get(HINT_PREFIX + "conversational") or len([m for m in prompt if m.role != "system"]) > 1
        )
        row: dict[str, Any] = {}
        if conversational:
            row["prompt"] = [{"role": m.role, "content": m.content} for m in prompt]
            row["chosen"] = [{"role": "assistant", "content": record.chosen}]
            row["rejected"] = [{"role": "assistant", "content": record.rejected}]
        else:
            if prompt[0].role == "system":
                row["system"] = prompt[0].content
            row["prompt"] = prompt[-1].content
            row["chosen"] = record.chosen
            row["rejected"] = record.rejected
        row.update(public_extra(record.extra))
        return row


@register
class ShareGPTPreferenceFormat(RecordFormat):
    """MedicalGPT's ``{"conversations": [...], "chosen", "rejected", "system_prompt"?}``."""

    name = "preference_sharegpt"
    kind = RecordKind.PREFERENCE
    priority = 30
    description = "MedicalGPT preference {conversations, chosen, rejected}"
    KNOWN: ClassVar[frozenset[str]] = frozenset({"conversations", "chosen", "rejected", "system_prompt"})

    def matches(self, row: dict[str, Any]) -> bool:
        return "conversations" in row and "chosen" in row and "rejected" in row

    def parse(self, row: Any, *, source: str | None = None) -> PreferencePair:
        row = expect_dict(row)
        extra = split_known(row, self.KNOWN)
        messages = parse_sharegpt_turns(row.get("conversations"), "conversations")
        if row.get("system_prompt"):
            messages.insert(0, Message("system", require_text(row["system_prompt"], "system_prompt")))
        _check_prompt(messages, "conversations")
        return PreferencePair(
            messages, require_text(row.get("chosen"), "chosen"), require_text(row.get("rejected"), "rejected"), extra
        )

    def dump(self, record: PreferencePair) -> dict[str, Any]:
        turns = [m for m in record.prompt if m.role != "system"]
        row: dict[str, Any] = {"conversations": [{"from": SHAREGPT_FROM[m.role], "value": m.content} for m in turns]}
        if record.prompt[0].role == "system":
            row["system_prompt"] = record.prompt[0].content
        row["chosen"] = record.chosen
        row["rejected"] = record.rejected
        row.update(public_extra(record.extra))
        return row


@register
class QuestionResponsePreferenceFormat(RecordFormat):
    """shibing624/medical's reward split ``{"question", "response_chosen", "response_rejected"}``."""

    name = "preference_medical"
    kind = RecordKind.PREFERENCE
    priority = 30
    description = "shibing624/medical {question, response_chosen, response_rejected}"
    KNOWN: ClassVar[frozenset[str]] = frozenset({"question", "response_chosen", "response_rejected", "system"})

    def matches(self, row: dict[str, Any]) -> bool:
        return {"question", "response_chosen", "response_rejected"} <= row.keys()

    def parse(self, row: Any, *, source: str | None = None) -> PreferencePair:
        row = expect_dict(row)
        messages = [Message("user", require_text(row.get("question"), "question"))]
        if row.get("system"):
            messages.insert(0, Message("system", require_text(row["system"], "system")))
        return PreferencePair(
            messages,
            require_text(row.get("response_chosen"), "response_chosen"),
            require_text(row.get("response_rejected"), "response_rejected"),
            split_known(row, self.KNOWN),
        )

    def dump(self, record: PreferencePair) -> dict[str, Any]:
        turns = [m for m in record.prompt if m.role != "system"]
        if len(turns) != 1:
            raise FieldError("prompt", "preference_medical holds a single question, not a multi-turn prompt")
        row: dict[str, Any] = {}
        if record.prompt[0].role == "system":
            row["system"] = record.prompt[0].content
        row.update(question=turns[0].content, response_chosen=record.chosen, response_rejected=record.rejected)
        row.update(public_extra(record.extra))
        return row
