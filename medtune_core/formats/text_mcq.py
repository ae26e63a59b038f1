"""Pretraining text (``.txt`` lines, ``{"text"}`` JSONL) and multiple-choice questions (MedQA, C-Eval, CMMLU)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
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
from medtune_core.formats.records import MultipleChoice, RecordKind, TextDocument, require_text

OPTION_LETTERS = "ABCDEFGH"


@register
class TextJsonlFormat(RecordFormat):
    """``{"text": ...}`` one document a line."""

    name = "text"
    kind = RecordKind.TEXT
    priority = 5
    description = "pretraining text {text}"

    def matches(self, row: dict[str, Any]) -> bool:
        return "text" in row

    def parse(self, row: Any, *, source: str | None = None) -> TextDocument:
        row = expect_dict(row)
        return TextDocument(require_text(row.get("text"), "text"), split_known(row, {"text"}))

    def dump(self, record: TextDocument) -> dict[str, Any]:
        return {"text": record.text, **public_extra(record.extra)}


@register
class TextLinesFormat(RecordFormat):
    """A ``.txt`` file, one document a line (blank lines are separators, not rows)."""

    name = "txt"
    kind = RecordKind.TEXT
    container = "txt"
    description = "pretraining text, .txt one document a line"

    def parse(self, row: Any, *, source: str | None = None) -> TextDocument:
        return TextDocument(require_text(row, "text"))

    def dump(self, record: TextDocument) -> str:
        if "\n" in record.text or "\r" in record.text:
            raise FieldError("text", "a .txt document must fit on one line; use the 'text' JSONL format")
        return record.text


def _check_answer(answer: Any, options: dict[str, str], field: str, *, required: bool) -> str | None:
    if answer in (None, ""):
        if required:
            raise FieldError(field, "missing or null")
        return None
    if not isinstance(answer, str):
        raise FieldError(field, f"expected an option letter, got {type(answer).__name__}")
    letter = answer.strip().upper()
    if letter not in options:
        raise FieldError(field, f"{answer!r} is not one of the options {', '.join(options)}")
    return letter


def _options_from_columns(row: dict[str, Any]) -> dict[str, str]:
    options = {}
    for letter in OPTION_LETTERS:
        if letter in row and row[letter] not in (None, ""):
            options[letter] = require_text(str(row[letter]), letter)
    if len(options) < 2:
        raise FieldError("options", "fewer than two options (columns A, B, ...)")
    return options


def _new_option_key(key: Any, options: dict[str, str], field: str) -> str:
    """An option letter, refused when the row already has it (``A`` twice, or ``a`` and ``A``)."""
    letter = str(key).strip().upper()
    if letter in options:
        raise FieldError(field, f"duplicate option key {letter!r}")
    return letter


def _letter_of_answer(answer: Any, options: dict[str, str]) -> str:
    """The letter of the one option whose text is ``answer`` (a row with ``answer`` but no ``answer_idx``)."""
    text = require_text(answer, "answer").strip()
    letters = [k for k, v in options.items() if v.strip() == text]
    if len(letters) != 1:
        why = "matches no option" if not letters else f"matches options {', '.join(letters)}"
        raise FieldError("answer_idx", f"missing, and answer {text!r} {why}")
    return letters[0]


@lru_cache(maxsize=256)
def subject_from_path(source: str | None) -> str | None:
    """C-Eval names files ``clinical_medicine_val.csv``; CMMLU ``anatomy.csv``. The subject is the stem."""
    if not source:
        return None
    return re.sub(r"_(dev|val|test|train)$", "", Path(source).stem)


@register
class MedQAFormat(RecordFormat):
    """MedQA ``{"question", "options": {A: ...} | [{key, value}], "answer", "answer_idx", "meta_info"?}``."""

    name = "medqa"
    kind = RecordKind.MCQ
    priority = 25
    description = "MedQA {question, options, answer, answer_idx}"
    KNOWN: ClassVar[frozenset[str]] = frozenset({"question", "options", "answer", "answer_idx", "subject", "id"})

    def matches(self, row: dict[str, Any]) -> bool:
        return "question" in row and "options" in row

    def parse(self, row: Any, *, source: str | None = None) -> MultipleChoice:
        row = expect_dict(row)
        question = require_text(row.get("question"), "question")
        raw = row.get("options")
        extra = split_known(row, self.KNOWN)
        options: dict[str, str] = {}
        if isinstance(raw, dict):
            for key, value in raw.items():
                letter = _new_option_key(key, options, f"options.{key}")
                options[letter] = require_text(value, f"options.{key}")
        elif isinstance(raw, list):
            extra[HINT_PREFIX + "options_list"] = True
            for i, item in enumerate(raw):
                if not isinstance(item, dict) or "key" not in item or "value" not in item:
                    raise FieldError(f"options[{i}]", "expected an object {key, value}")
                letter = _new_option_key(item["key"], options, f"options[{i}].key")
                options[letter] = require_text(item["value"], f"options[{i}].value")
        elif raw is None:
            raise FieldError("options", "missing or null")
        else:
            raise FieldError("options", f"expected an object or a list of {{key, value}}, got {type(raw).__name__}")
        if len(options) < 2:
            raise FieldError("options", "fewer than two options")
        answer_text = row.get("answer")
        if row.get("answer_idx") in (None, "") and answer_text not in (None, ""):
            letter = _letter_of_answer(answer_text, options)
            extra[HINT_PREFIX + "derived_answer_idx"] = True
        else:
            letter = _check_answer(row.get("answer_idx"), options, "answer_idx", required=True)
        if answer_text is not None:
            answer_text = require_text(answer_text, "answer")
            if answer_text.strip() != options[letter].strip():
                raise FieldError("answer", f"{answer_text!r} does not match option {letter} ({options[letter]!r})")
        else:
            extra[HINT_PREFIX + "no_answer_text"] = True
        subject = row.get("subject")
        if subject is None:
            subject = subject_from_path(source)
            extra[HINT_PREFIX + "derived_subject"] = True
        ident = row.get("id")
        return MultipleChoice(question, options, letter, subject, None if ident is None else str(ident), None, extra)

    def dump(self, record: MultipleChoice) -> dict[str, Any]:
        row: dict[str, Any] = {}
        if record.id is not None:
            row["id"] = record.id
        row["question"] = record.question
        if record.extra.get(HINT_PREFIX + "options_list"):
            row["options"] = [{"key": k, "value": v} for k, v in record.options.items()]
        else:
            row["options"] = dict(record.options)
        if record.answer is None:
            raise FieldError("answer", "MedQA rows need an answer")
        if not record.extra.get(HINT_PREFIX + "no_answer_text"):
            row["answer"] = record.options[record.answer]
        if not record.extra.get(HINT_PREFIX + "derived_answer_idx"):
            row["answer_idx"] = record.answer
        if record.subject is not None and not record.extra.get(HINT_PREFIX + "derived_subject"):
            row["subject"] = record.subject
        row.update(public_extra(record.extra))
        return row


class _ColumnsMCQ(RecordFormat):
    """Options as columns A, B, C, D (C-Eval / CMMLU)."""

    kind = RecordKind.MCQ

    def parse(self, row: Any, *, source: str | None = None) -> MultipleChoice:
        row = expect_dict(row)
        norm = {_norm_key(k): v for k, v in row.items()}
        question = require_text(norm.get("question"), "question")
        options = _options_from_columns(norm)
        answer = _check_answer(norm.get("answer"), options, "answer", required=False)
        explanation = norm.get("explanation") or None
        ident = norm.get("id")
        subject = norm.get("subject") or subject_from_path(source)
        known = {"id", "question", "answer", "explanation", "subject", *OPTION_LETTERS}
        extra = {k: v for k, v in row.items() if _norm_key(k) not in known}
        return MultipleChoice(
            question, options, answer, subject, None if ident in (None, "") else str(ident), explanation, extra
        )


def _norm_key(key: str | None) -> str:
    """CSV headers vary: ``id,question,...,answer`` (C-Eval) or ``,Question,...,Answer`` (CMMLU)."""
    if key is None:
        return ""
    key = key.strip()
    if key == "":
        return "id"
    return key if key in OPTION_LETTERS else key.lower()


@register
class MCQCsvFormat(_ColumnsMCQ):
    """C-Eval / CMMLU CSV ``id,question,A,B,C,D,answer[,explanation]``; the subject is the file's stem."""

    name = "mcq_csv"
    container = "csv"
    description = "C-Eval/CMMLU CSV id,question,A,B,C,D,answer[,explanation]"

    def dump(self, record: MultipleChoice) -> dict[str, Any]:
        row = {"id": record.id or "", "question": record.question}
        row.update({k: record.options.get(k, "") for k in "ABCD"})
        row["answer"] = record.answer or ""
        row["explanation"] = record.explanation or ""
        return row

    def fieldnames(self) -> list[str]:
        return ["id", "question", "A", "B", "C", "D", "answer", "explanation"]


@register
class CEvalJsonlFormat(_ColumnsMCQ):
    """C-Eval rows as JSONL ``{"id", "question", "A", "B", "C", "D", "answer", "explanation"?, "subject"?}``."""

    name = "ceval"
    priority = 25
    description = "C-Eval JSONL {id, question, A, B, C, D, answer}"

    def matches(self, row: dict[str, Any]) -> bool:
        return "question" in row and "A" in row and "B" in row

    def dump(self, record: MultipleChoice) -> dict[str, Any]:
        row: dict[str, Any] = {}
        if record.id is not None:
            row["id"] = record.id
        row["question"] = record.question
        row.update(record.options)
        row["answer"] = record.answer
        if record.explanation:
            row["explanation"] = record.explanation
        if record.subject:
            row["subject"] = record.subject
        row.update(public_extra(record.extra))
        return row
