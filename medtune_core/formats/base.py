"""The format registry: one :class:`RecordFormat` per on-disk shape, looked up by name or detected.

A format knows its container (JSONL rows, CSV rows or plain text lines), how to recognise a row, how to
parse a row into a canonical record (raising :class:`FieldError` naming the field) and how to dump a
canonical record back into a row. Adding a format means writing one class and calling :func:`register`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

from medtune_core.errors import FieldError, MedtuneError
from medtune_core.formats.records import Record, RecordKind

Container = Literal["jsonl", "csv", "txt"]

#: Keys in ``Record.extra`` that start with this prefix are hints for one format's round trip and are
#: never written out as row keys by any format.
HINT_PREFIX = "__"


class RecordFormat(ABC):
    """One on-disk record shape."""

    name: ClassVar[str]
    kind: ClassVar[RecordKind]
    container: ClassVar[Container] = "jsonl"
    #: Detection priority: formats with a higher number are tried first (more specific shapes).
    priority: ClassVar[int] = 0
    description: ClassVar[str] = ""

    def matches(self, row: dict[str, Any]) -> bool:
        """Whether a parsed row looks like this format (used for auto-detection)."""
        return False

    @abstractmethod
    def parse(self, row: Any, *, source: str | None = None) -> Record:
        """Turn one row into its canonical record, raising :class:`FieldError` on bad content."""

    @abstractmethod
    def dump(self, record: Record) -> Any:
        """Turn a canonical record of this format's kind into a row."""

    def fieldnames(self) -> list[str] | None:
        """CSV header for formats whose container is CSV."""
        return None


FORMATS: dict[str, RecordFormat] = {}


def register(fmt_cls: type[RecordFormat]) -> type[RecordFormat]:
    """Class decorator adding a format to the registry under its ``name``."""
    FORMATS[fmt_cls.name] = fmt_cls()
    return fmt_cls


def get_format(name: str) -> RecordFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise MedtuneError(f"unknown format {name!r}; known formats: {', '.join(sorted(FORMATS))}") from None


def detect_row_format(row: Any) -> RecordFormat | None:
    """The most specific JSONL format whose shape matches ``row``, or None."""
    if not isinstance(row, dict):
        return None
    for fmt in sorted(FORMATS.values(), key=lambda f: -f.priority):
        if fmt.container == "jsonl" and fmt.matches(row):
            return fmt
    return None


def public_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """The extra keys that are real row keys (not round-trip hints)."""
    return {k: v for k, v in extra.items() if not k.startswith(HINT_PREFIX)}


def split_known(row: dict[str, Any], known: set[str]) -> dict[str, Any]:
    """Keys of ``row`` that a format does not interpret itself; carried through as ``extra``."""
    return {k: v for k, v in row.items() if k not in known}


def expect_dict(row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise FieldError("<row>", f"expected a JSON object, got {type(row).__name__}")
    return row
