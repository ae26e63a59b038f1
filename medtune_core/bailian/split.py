"""Validate Bailian SFT files and split them under Bailian's size limit (300 MB a file) without breaking a line.

Sizes are decimal (1 MB = 10^6 bytes) and parts stay 2 % under the limit: 294,000,000 bytes at most.

Both stream: one line in memory at a time. A line is valid when it is a JSON object ``{"messages": [...]}``
whose roles are an optional system message, then user/assistant alternating, user first, assistant last —
what Bailian's ``Files.upload`` and its trainer accept. Errors read ``path:line: field: problem``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from medtune_core.dataio import Manifest, atomic_write, manifest_path
from medtune_core.dataio.atomic import remove_stale_temp_files
from medtune_core.errors import FieldError, MedtuneError, RecordError
from medtune_core.formats.chat import parse_openai_messages
from medtune_core.formats.records import check_turn_order
from medtune_core.hashing import file_sha256

#: Bailian states its limit in MB; read as decimal (10^6 bytes), the smaller of the two readings.
MB = 1_000_000
#: Bailian's upload limit for one file.
BAILIAN_FILE_LIMIT = 300 * MB
#: Parts stay this share under the limit (a limit counted on the multipart body, a server rounding its own way).
SAFETY_MARGIN = 0.02
#: The largest part medtune writes: 294,000,000 bytes.
DEFAULT_MAX_BYTES = int(BAILIAN_FILE_LIMIT * (1 - SAFETY_MARGIN))


#: The fewest training rows Bailian accepts for a fine-tune job (5,000-10,000 are typical).
MIN_TRAINING_ROWS = 1000


def too_few_rows(rows: int, minimum: int = MIN_TRAINING_ROWS) -> str | None:
    """The problem with training on ``rows`` rows, or None when there are enough."""
    if rows >= minimum:
        return None
    return (
        f"only {rows:,} training rows: Bailian needs at least {MIN_TRAINING_ROWS:,} for a fine-tune job "
        f"(5,000-10,000 are typical); a job on fewer fails or learns little"
    )


def max_part_bytes(max_mb: float) -> int:
    """``max_mb`` decimal megabytes in bytes, never above :data:`DEFAULT_MAX_BYTES`."""
    if max_mb <= 0:
        raise MedtuneError(f"the part size must be positive, got {max_mb} MB")
    return min(int(max_mb * MB), DEFAULT_MAX_BYTES)


def check_bailian_line(raw: bytes) -> dict[str, Any]:
    """Parse and check one line; raises :class:`FieldError` naming what is wrong."""
    text = raw.rstrip(b"\r\n")
    if not text.strip():
        raise FieldError("<line>", "blank line (Bailian rejects files with blank lines)")
    try:
        row = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FieldError("<json>", f"invalid JSON: {exc}") from None
    if not isinstance(row, dict):
        raise FieldError("<row>", f"expected a JSON object, got {type(row).__name__}")
    messages = parse_openai_messages(row.get("messages"), "messages")
    check_turn_order(messages, "messages")
    return row


@dataclass
class ValidationReport:
    path: str
    rows: int
    bytes: int


def validate_bailian_file(path: str | os.PathLike[str]) -> ValidationReport:
    """Check every line of a Bailian file; raises :class:`RecordError` at the first bad one."""
    p = Path(path)
    rows = 0
    with open(p, "rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            try:
                check_bailian_line(raw)
            except FieldError as exc:
                raise RecordError(p, line_no, exc.field, exc.problem) from None
            rows += 1
    if rows == 0:
        raise MedtuneError(f"{p}: empty file, nothing to train on")
    return ValidationReport(str(p), rows, p.stat().st_size)


def part_name(path: Path, index: int) -> str:
    return f"{path.stem}.part{index:03d}{path.suffix}"


class _Part:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.ctx = atomic_write(path, "wb", encoding=None)
        self.fh: IO[bytes] = self.ctx.__enter__()
        self.digest = hashlib.sha256()
        self.rows = 0
        self.bytes = 0
        self.first_line = 0

    def write(self, raw: bytes, line_no: int) -> None:
        if not self.rows:
            self.first_line = line_no
        self.fh.write(raw)
        self.digest.update(raw)
        self.rows += 1
        self.bytes += len(raw)

    def close(self, exc: BaseException | None = None) -> None:
        if exc is None:
            self.ctx.__exit__(None, None, None)
        else:
            self.ctx.__exit__(type(exc), exc, exc.__traceback__)


def split_file(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_rows: int | None = None,
    validate: bool = True,
) -> list[Manifest]:
    """Split a Bailian file into parts of at most ``max_bytes`` bytes (and ``max_rows`` rows), whole lines only.

    A file that already fits is not copied: its own manifest comes back (the file is validated all the same).
    Parts are named ``<stem>.part001.jsonl``... in ``out_dir`` (default: beside the file), each written
    atomically with a manifest; parts of an earlier, longer split are removed. A single line over the limit
    cannot be split and raises :class:`RecordError`.
    """
    src = Path(path)
    if max_bytes <= 0:
        raise MedtuneError(f"max_bytes must be positive, got {max_bytes}")
    if max_rows is not None and max_rows <= 0:
        raise MedtuneError(f"max_rows must be positive, got {max_rows}")
    size = src.stat().st_size
    dest = Path(out_dir) if out_dir is not None else src.parent
    _remove_stale_temp_parts(src, dest)
    if size <= max_bytes and _fits_rows(src, max_rows):
        report = validate_bailian_file(src) if validate else None
        _remove_stale_parts(src, dest, keep=0)
        return [_whole_file_manifest(src, report.rows if report else _count_lines(src))]

    src_sha = file_sha256(src)
    parts: list[_Part] = []
    current: _Part | None = None
    try:
        with open(src, "rb") as fh:
            for line_no, raw in enumerate(fh, 1):
                if not raw.endswith(b"\n"):
                    raw += b"\n"
                if validate:
                    try:
                        check_bailian_line(raw)
                    except FieldError as exc:
                        raise RecordError(src, line_no, exc.field, exc.problem) from None
                if len(raw) > max_bytes:
                    raise RecordError(
                        src, line_no, "<line>", f"{len(raw)} bytes, over the {max_bytes}-byte limit of one part"
                    )
                full = current is not None and (
                    current.bytes + len(raw) > max_bytes or (max_rows is not None and current.rows >= max_rows)
                )
                if current is None or full:
                    if current is not None:
                        current.close()
                    current = _Part(dest / part_name(src, len(parts) + 1))
                    parts.append(current)
                current.write(raw, line_no)
        if current is not None:
            current.close()
    except BaseException as exc:
        if current is not None and not current.fh.closed:
            current.close(exc)
        for part in parts:  # an aborted split leaves no part behind
            part.path.unlink(missing_ok=True)
        raise
    manifests = []
    for i, part in enumerate(parts, 1):
        manifest = Manifest(
            path=str(part.path),
            format="messages",
            kind="chat",
            rows=part.rows,
            sha256=part.digest.hexdigest(),
            bytes=part.bytes,
            sources=[
                {"path": str(src), "sha256": src_sha, "part": i, "parts": len(parts), "first_line": part.first_line}
            ],
        )
        manifest.save()
        manifests.append(manifest)
    _remove_stale_parts(src, dest, keep=len(parts))
    return manifests


def _whole_file_manifest(src: Path, rows: int) -> Manifest:
    """The file's own manifest when it is current (it keeps its sources and rejects), else a new one."""
    if manifest_path(src).is_file():
        try:
            existing = Manifest.load(src)
        except (ValueError, TypeError):
            existing = None
        if existing is not None and existing.is_current():
            return existing
    manifest = Manifest(
        path=str(src),
        format="messages",
        kind="chat",
        rows=rows,
        sha256=file_sha256(src),
        bytes=src.stat().st_size,
        sources=[{"path": str(src), "part": 1, "parts": 1}],
    )
    manifest.save()
    return manifest


def _fits_rows(path: Path, max_rows: int | None) -> bool:
    return max_rows is None or _count_lines(path) <= max_rows


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def _remove_stale_temp_parts(src: Path, dest: Path) -> None:
    """Temporary parts a killed split left behind (``.<stem>.partNNN.jsonl.<random>.tmp``)."""
    remove_stale_temp_files(dest / f"{glob.escape(src.stem)}.part*{glob.escape(src.suffix)}")


def _remove_stale_parts(src: Path, dest: Path, keep: int) -> None:
    pattern = re.compile(re.escape(src.stem) + r"\.part(\d{3,})" + re.escape(src.suffix) + "$")
    if not dest.is_dir():
        return
    for p in dest.iterdir():
        m = pattern.match(p.name)
        if m and int(m.group(1)) > keep:
            p.unlink(missing_ok=True)
            manifest_path(p).unlink(missing_ok=True)
