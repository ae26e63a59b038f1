"""Conversions between record kinds, as a registry keyed by (source kind, target kind).

Within a kind every format converts losslessly through the canonical record. Across kinds only the
conversions that make sense exist: a multiple-choice question becomes a chat sample (question and options
asked, ``答案是 X. text`` answered, as Bailian's seed does), a preference pair becomes the SFT sample of its
chosen answer, a conversation becomes pretraining text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from medtune_core.errors import MedtuneError
from medtune_core.formats.records import (
    Conversation,
    Message,
    MultipleChoice,
    PreferencePair,
    Record,
    RecordKind,
    TextDocument,
)


@dataclass(frozen=True)
class MCQPromptTemplate:
    """How a multiple-choice question is asked and answered in a chat sample."""

    system: str | None = "你是一名专业的医学助手，擅长回答医学选择题。请根据题目和选项给出正确答案。"
    options_header: str = "选项："
    answer_prefix: str = "答案是 "

    def user(self, mcq: MultipleChoice) -> str:
        lines = "\n".join(f"{k}. {v}" for k, v in mcq.options.items())
        return f"{mcq.question}\n\n{self.options_header}\n{lines}"

    def assistant(self, mcq: MultipleChoice) -> str:
        if mcq.answer is None:
            raise MedtuneError("a question without an answer cannot become a training sample")
        return f"{self.answer_prefix}{mcq.answer}. {mcq.options[mcq.answer]}"


ZH_MCQ_TEMPLATE = MCQPromptTemplate()
EN_MCQ_TEMPLATE = MCQPromptTemplate(
    system="You are a professional medical assistant, good at medical multiple-choice questions. "
    "Give the correct answer from the question and options.",
    options_header="Options:",
    answer_prefix="The answer is ",
)


def mcq_to_conversation(mcq: MultipleChoice, template: MCQPromptTemplate = ZH_MCQ_TEMPLATE) -> Conversation:
    messages = [Message("system", template.system)] if template.system else []
    messages += [Message("user", template.user(mcq)), Message("assistant", template.assistant(mcq))]
    extra = {"subject": mcq.subject} if mcq.subject else {}
    if mcq.id is not None:
        extra["id"] = mcq.id
    return Conversation(messages, extra)


def preference_to_conversation(pair: PreferencePair) -> Conversation:
    return Conversation([*pair.prompt, Message("assistant", pair.chosen)], {})


def conversation_to_text(conv: Conversation) -> TextDocument:
    return TextDocument("\n".join(m.content for m in conv.turns))


CROSS_KIND: dict[tuple[RecordKind, RecordKind], Callable[[Record], Record]] = {
    (RecordKind.MCQ, RecordKind.CHAT): mcq_to_conversation,
    (RecordKind.PREFERENCE, RecordKind.CHAT): preference_to_conversation,
    (RecordKind.CHAT, RecordKind.TEXT): conversation_to_text,
    (RecordKind.MCQ, RecordKind.TEXT): lambda r: conversation_to_text(mcq_to_conversation(r)),
    (RecordKind.PREFERENCE, RecordKind.TEXT): lambda r: conversation_to_text(preference_to_conversation(r)),
}


def to_kind(record: Record, kind: RecordKind) -> Record:
    """Convert ``record`` to a canonical record of ``kind`` (identity within a kind)."""
    if record.kind == kind:
        return record
    try:
        return CROSS_KIND[(record.kind, kind)](record)
    except KeyError:
        raise MedtuneError(f"cannot convert {record.kind.value} records to {kind.value} records") from None
