"""Streaming, validating readers: one row in memory at a time, every problem reported as ``path:line: field: problem``.

Two policies decide what a bad row does. ``strict`` (the default) raises :class:`RecordError` at the first
bad row, so the caller writes nothing. ``skip`` keeps going, counts each problem and, when a rejects path is
given, writes every bad row there with its line number, reason and original text, so nothing is lost.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from medtune_core.dataio.atomic import atomic_write
from medtune_core.errors import FieldError, FormatDetectionError, RecordError
from medtune_core.formats import Record, RecordFormat, detect_row_format, get_format

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"
DETECT_SAMPLE_ROWS = 5


class Policy(StrEnum):
    """What a bad row does: stop everything (``strict``) or go to the rejects file (``skip``)."""

    STRICT = "strict"
    SKIP = "skip"


@dataclass
class ReadStats:
    """Counts of one read, reported by ``medtune validate`` and written into manifests."""

    rows: int = 0
    rejected: int = 0
    blank_lines: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "rejected": self.rejected,
            "blank_lines": self.blank_lines,
            "reasons": dict(self.reasons.most_common()),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class RawRow:
    """A row before parsing: its first line number, the decoded value (or the problem) and the raw text."""

    line: int
    value: Any
    raw: str
    problem: FieldError | None = None


def _decode(raw: bytes, line: int, path: Path, policy: Policy, stats: ReadStats) -> tuple[str, FieldError | None]:
    if line == 1 and raw.startswith(BOM):
        msg = "file starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM"
        if policy is Policy.STRICT:
            raise RecordError(path, 1, "<encoding>", msg)
        stats.warnings.append(f"{path}:1: <encoding>: {msg} (ignored)")
        raw = raw[len(BOM) :]
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        text = raw.decode("utf-8", errors="replace")
        bad = raw[exc.start : exc.start + 4].hex(" ")
        return text, FieldError("<encoding>", f"not valid UTF-8 at byte {exc.start} (bytes {bad})")


def _binary_lines(path: Path, policy: Policy, stats: ReadStats) -> Iterator[tuple[int, str, FieldError | None]]:
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            text, problem = _decode(raw, line_no, path, policy, stats)
            yield line_no, text.rstrip("\r\n"), problem


def iter_raw_rows(path: Path, container: str, policy: Policy, stats: ReadStats) -> Iterator[RawRow]:
    """Rows of a file in its container (JSONL, CSV or text lines), blank lines counted and skipped."""
    lines = _binary_lines(path, policy, stats)
    if container == "csv":
        yield from _csv_rows(path, lines)
        return
    for line_no, text, problem in lines:
        if not text.strip():
            stats.blank_lines += 1
            continue
        if problem is not None or container == "txt":
            yield RawRow(line_no, text, text, problem)
            continue
        try:
            yield RawRow(line_no, json.loads(text, object_pairs_hook=_unique_keys), text)
        except json.JSONDecodeError as exc:
            yield RawRow(line_no, None, text, FieldError("<json>", f"invalid JSON: {exc.msg} (column {exc.colno})"))
        except _DuplicateKey as exc:
            yield RawRow(line_no, None, text, FieldError("<json>", f"duplicate key {exc.args[0]!r} in one object"))


class _DuplicateKey(ValueError):
    """A JSON object names a key twice; ``json`` would keep the last value silently."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return obj


def _csv_rows(path: Path, lines: Iterator[tuple[int, str, FieldError | None]]) -> Iterator[RawRow]:
    problems: dict[int, FieldError] = {}
    raw_lines: dict[int, str] = {}

    def feed() -> Iterator[str]:
        for line_no, text, problem in lines:
            if problem is not None:
                problems[line_no] = problem
            raw_lines[line_no] = text
            yield text + "\n"

    reader = csv.reader(feed())
    header = next(reader, None)
    if header is None:
        return
    last = reader.line_num
    for cells in reader:
        start, last = last + 1, reader.line_num
        raw = "\n".join(raw_lines.pop(i, "") for i in range(start, last + 1))
        problem = next((problems.pop(i) for i in range(start, last + 1) if i in problems), None)
        if not any(c.strip() for c in cells):
            continue
        if problem is None and len(cells) != len(header):
            problem = FieldError("<csv>", f"expected {len(header)} columns, found {len(cells)}")
        yield RawRow(start, dict(zip(header, cells, strict=False)), raw, problem)


def detect_format(path: str | Path) -> RecordFormat:
    """The format of a file: CSV by suffix; otherwise by the keys of its first JSON rows.

    A ``.txt`` file whose first row is a JSON object of a known shape (MedicalGPT ships ``{"问", "答"}``
    lines as ``.txt``) is read in that format; any other ``.txt`` is plain text, one document a line.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return get_format("mcq_csv")
    stats = ReadStats()
    for seen, row in enumerate(iter_raw_rows(p, "jsonl", Policy.SKIP, stats), 1):
        fmt = detect_row_format(row.value) if row.problem is None else None
        if fmt is not None:
            return fmt
        if suffix == ".txt":
            return get_format("txt")
        if seen >= DETECT_SAMPLE_ROWS:
            what = sorted(row.value) if isinstance(row.value, dict) else "rows that are not JSON objects"
            raise FormatDetectionError(f"{p}:{row.line}: cannot detect the record format from {what}")
    if suffix == ".txt":
        return get_format("txt")
    raise FormatDetectionError(f"{p}: no valid row to detect the record format from")


class DatasetReader:
    """Iterate the canonical records of one file, validating every row as it streams past.

    ``fmt`` is a format name or None to detect it. Under :attr:`Policy.SKIP` bad rows are counted in
    :attr:`stats` and, when ``rejects_path`` is set, written there as JSON lines
    ``{"source", "line", "field", "problem", "raw"}`` (the file is written even when empty, so an old
    rejects file never outlives a clean re-run).
    """

    def __init__(
        self,
        path: str | Path,
        fmt: str | RecordFormat | None = None,
        *,
        policy: Policy | str = Policy.STRICT,
        rejects_path: str | Path | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        self.policy = Policy(policy)
        if isinstance(fmt, str):
            fmt = get_format(fmt)
        self.format: RecordFormat = fmt or detect_format(self.path)
        self.rejects_path = Path(rejects_path) if rejects_path else None
        self.stats = ReadStats()

    def __iter__(self) -> Iterator[Record]:
        for _, record in self.iter_with_lines():
            yield record

    def iter_with_lines(self) -> Iterator[tuple[int, Record]]:
        """The records with the line number each one starts on."""
        if self.rejects_path is not None and self.policy is Policy.SKIP:
            with atomic_write(self.rejects_path) as sink:
                yield from self._records(sink)
        else:
            yield from self._records(None)

    def _records(self, sink: Any) -> Iterator[tuple[int, Record]]:
        fmt, source = self.format, str(self.path)
        for row in iter_raw_rows(self.path, fmt.container, self.policy, self.stats):
            problem = row.problem
            record = None
            if problem is None:
                try:
                    record = fmt.parse(row.value, source=source)
                except FieldError as exc:
                    problem = exc
            if problem is not None:
                self._reject(row, problem, sink)
                continue
            self.stats.rows += 1
            yield row.line, record

    def _reject(self, row: RawRow, problem: FieldError, sink: Any) -> None:
        if self.policy is Policy.STRICT:
            raise RecordError(self.path, row.line, problem.field, problem.problem)
        self.stats.rejected += 1
        self.stats.reasons[f"{problem.field}: {problem.problem}"] += 1
        log.warning("%s:%d: %s: %s (rejected)", self.path, row.line, problem.field, problem.problem)
        if sink is not None:
            entry = {"source": str(self.path), "line": row.line, "field": problem.field, "problem": problem.problem}
            entry["raw"] = row.raw
            sink.write(json.dumps(entry, ensure_ascii=False) + "\n")
