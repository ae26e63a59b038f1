"""Canonical records: every on-disk format converts to and from one of these four kinds.

Chat messages are the hub: alpaca, ShareGPT, OpenAI messages and question/answer pairs all become a
:class:`Conversation`. Preference data, pretraining text and multiple-choice questions have their own
canonical kinds because their trainers and evaluators need their structure.

``extra`` keeps whatever a source row carried beyond the canonical fields (ids, ``meta`` blocks,
alpaca's structured JSON input), so a round trip through the canonical form loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from medtune_core.errors import FieldError

ROLES = ("system", "user", "assistant")


class RecordKind(StrEnum):
    """What a record is for; decides which formats it can be converted into."""

    CHAT = "chat"
    PREFERENCE = "preference"
    TEXT = "text"
    MCQ = "mcq"


@dataclass(slots=True)
class Message:
    role: str
    content: str


@dataclass(slots=True)
class Conversation:
    """A dialogue: an optional system message, then user/assistant turns alternating, user first."""

    messages: list[Message]
    extra: dict[str, Any] = field(default_factory=dict)

    kind = RecordKind.CHAT

    @property
    def system(self) -> str | None:
        return self.messages[0].content if self.messages and self.messages[0].role == "system" else None

    @property
    def turns(self) -> list[Message]:
        """The messages without the leading system message."""
        return self.messages[1:] if self.system is not None else list(self.messages)


@dataclass(slots=True)
class PreferencePair:
    """A prompt (as chat messages, last one from the user) with a preferred and a rejected answer."""

    prompt: list[Message]
    chosen: str
    rejected: str
    extra: dict[str, Any] = field(default_factory=dict)

    kind = RecordKind.PREFERENCE


@dataclass(slots=True)
class TextDocument:
    """One pretraining document."""

    text: str
    extra: dict[str, Any] = field(default_factory=dict)

    kind = RecordKind.TEXT


@dataclass(slots=True)
class MultipleChoice:
    """A multiple-choice question; ``options`` keeps the letters in order, ``answer`` is a letter."""

    question: str
    options: dict[str, str]
    answer: str | None
    subject: str | None = None
    id: str | None = None
    explanation: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    kind = RecordKind.MCQ

    @property
    def answer_text(self) -> str | None:
        return self.options.get(self.answer) if self.answer else None


Record = Conversation | PreferencePair | TextDocument | MultipleChoice


def require_text(value: Any, field_name: str, *, allow_empty: bool = False) -> str:
    """Return ``value`` if it is a string with content, else raise a :class:`FieldError` naming the field."""
    if value is None:
        raise FieldError(field_name, "missing or null")
    if not isinstance(value, str):
        raise FieldError(field_name, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise FieldError(field_name, "empty content")
    return value


def check_turn_order(messages: list[Message], where: str, *, must_end_with_assistant: bool = True) -> None:
    """Enforce: optional system first, then user/assistant alternating starting with user."""
    if not messages:
        raise FieldError(where, "no messages")
    start = 1 if messages[0].role == "system" else 0
    turns = messages[start:]
    if not turns:
        raise FieldError(where, "only a system message, no turns")
    for i, msg in enumerate(turns):
        if msg.role not in ROLES:
            raise FieldError(f"{where}[{i + start}].role", f"unknown role {msg.role!r}")
        expected = "user" if i % 2 == 0 else "assistant"
        if msg.role != expected:
            raise FieldError(
                f"{where}[{i + start}].role",
                f"roles out of order: expected {expected!r}, got {msg.role!r}",
            )
    if must_end_with_assistant and turns[-1].role != "assistant":
        raise FieldError(where, "roles out of order: the last turn must be the assistant's")
