"""Training data: any supported file in, the rows each TRL trainer expects out.

Every stage names the kind of rows it needs:

- ``text``       ``{"text"}`` (PT; conversations and preference pairs become text)
- ``chat``       ``{"messages": [{"role", "content"}]}`` (SFT)
- ``preference`` ``{"prompt": [messages], "chosen": [assistant], "rejected": [assistant]}`` (RM, DPO, ORPO)
- ``unpaired``   ``{"prompt": [messages], "completion": [assistant], "label": bool}`` (KTO; each pair gives a
  desirable and an undesirable row)
- ``prompt``     ``{"prompt": [messages], "reference": str | None, "risk_level": int}`` (GRPO, RLOO; the extra
  columns reach reward functions as keyword arguments)

Files are read with :class:`~medtune_core.dataio.DatasetReader` (strict: a bad row stops the run with
``path:line: field: problem`` before anything is trained). A record of another kind than the stage trains on is
refused the same way (a preference file given to SFT would otherwise train on prompt + chosen without a word)
unless the stage asks for the conversion (``convert_data: true``). Conversions that are the documented way to
feed a stage are always accepted: anything to ``text`` (PT), chats and preference pairs to ``prompt`` (GRPO/RLOO).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medtune_core.dataio import DatasetReader
from medtune_core.errors import MedtuneError, RecordError
from medtune_core.formats import Conversation, Message, PreferencePair, RecordKind, TextDocument, to_kind

KINDS = ("text", "chat", "preference", "unpaired", "prompt")

RISK_LEVELS = {"critical": 4, "high": 3, "medium": 2, "moderate": 2, "low": 1, "none": 0}


def _msgs(messages: Iterable[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def risk_score(extra: dict[str, Any]) -> int:
    """``meta.risk_level`` (or a top-level ``risk_level``) as a number: names or integers, unknown = 0."""
    meta = extra.get("meta") if isinstance(extra.get("meta"), dict) else {}
    level = meta.get("risk_level", extra.get("risk_level"))
    if isinstance(level, bool) or level is None:
        return 0
    if isinstance(level, (int, float)):
        return int(level)
    text = str(level).strip().lower()
    if text.isdigit():
        return int(text)
    return RISK_LEVELS.get(text, 0)


#: Record kinds each data kind takes as they are; anything else needs ``convert_data``.
NATIVE = {
    "text": {RecordKind.TEXT, RecordKind.CHAT, RecordKind.PREFERENCE, RecordKind.MCQ},
    "chat": {RecordKind.CHAT},
    "preference": {RecordKind.PREFERENCE},
    "unpaired": {RecordKind.PREFERENCE},
    "prompt": {RecordKind.CHAT, RecordKind.PREFERENCE},
}


def iter_records(files: Iterable[str | Path]) -> Iterator[Any]:
    for f in files:
        yield from DatasetReader(f)


def iter_located(files: Iterable[str | Path]) -> Iterator[tuple[Path, int, Any]]:
    """``(file, line, record)`` for every record of ``files``."""
    for f in files:
        for line, record in DatasetReader(f).iter_with_lines():
            yield Path(f), line, record


def _row(record: Any, kind: str) -> list[dict[str, Any]]:
    if kind == "text":
        doc = to_kind(record, RecordKind.TEXT)
        assert isinstance(doc, TextDocument)
        return [{"text": doc.text}]
    if kind == "chat":
        conv = to_kind(record, RecordKind.CHAT)
        assert isinstance(conv, Conversation)
        return [{"messages": _msgs(conv.messages)}]
    if kind in ("preference", "unpaired"):
        if record.kind is not RecordKind.PREFERENCE:
            raise MedtuneError(f"{kind} training needs preference pairs (prompt, chosen, rejected), got {record.kind}")
        pair: PreferencePair = record
        prompt = _msgs(pair.prompt)
        chosen = [{"role": "assistant", "content": pair.chosen}]
        rejected = [{"role": "assistant", "content": pair.rejected}]
        if kind == "preference":
            return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
        return [
            {"prompt": prompt, "completion": chosen, "label": True},
            {"prompt": prompt, "completion": rejected, "label": False},
        ]
    if kind == "prompt":
        if record.kind is RecordKind.PREFERENCE:
            return [
                {"prompt": _msgs(record.prompt), "reference": record.chosen, "risk_level": risk_score(record.extra)}
            ]
        conv = to_kind(record, RecordKind.CHAT)
        assert isinstance(conv, Conversation)
        msgs = conv.messages
        reference = None
        if msgs and msgs[-1].role == "assistant":
            reference = msgs[-1].content
            msgs = msgs[:-1]
        return [{"prompt": _msgs(msgs), "reference": reference, "risk_level": risk_score(conv.extra)}]
    raise MedtuneError(f"unknown data kind {kind!r}; known: {', '.join(KINDS)}")


def load_rows(
    files: Iterable[str | Path],
    kind: str,
    *,
    max_samples: int | None = None,
    high_risk_first: bool = False,
    convert: bool = False,
) -> list[dict[str, Any]]:
    """Rows of ``kind`` from ``files`` (in file order; prompts highest risk first when asked).

    A record of a kind the stage does not take as it is fails with ``file:line`` unless ``convert`` is set.
    """
    files = list(files)
    if not files:
        raise MedtuneError(f"no training files given for {kind} data")
    rows: list[dict[str, Any]] = []
    native = NATIVE.get(kind, set())
    for path, line, record in iter_located(files):
        if record.kind not in native and (not convert or kind in ("preference", "unpaired")):
            hint = "; set convert_data: true to convert it" if kind not in ("preference", "unpaired") else ""
            raise RecordError(
                path, line, "kind", f"a {record.kind.value} record, but this stage trains on {kind} data{hint}"
            )
        try:
            rows.extend(_row(record, kind))
        except MedtuneError as exc:
            raise RecordError(path, line, "kind", str(exc)) from None
        if max_samples is not None and len(rows) >= max_samples:
            rows = rows[:max_samples]
            break
    if not rows:
        raise MedtuneError(f"{', '.join(map(str, files))}: no records")
    if kind == "prompt" and high_risk_first:
        rows.sort(key=lambda r: -r["risk_level"])  # stable: file order within a level
    return rows


def to_dataset(rows: list[dict[str, Any]]):
    """A ``datasets.Dataset`` of the rows (``reference`` None values kept as None)."""
    from datasets import Dataset

    return Dataset.from_list(rows)
