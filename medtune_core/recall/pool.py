"""The training pool: any chat / QA / preference / MCQ / text file, streamed, with stable row ids.

A row's id is ``<first 12 hex of the file's sha256>:<line>``: it names the same row for as long as the file's
contents do not change, whatever the file is called or wherever it lies. :func:`split_pool` streams the pool once
and writes the texts to embed in shards (``texts-00000.jsonl``: ``{"id", "text"}``), so each shard can be embedded
(and cached) on its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from medtune_core.dataio import DatasetReader, Policy, atomic_write, atomic_write_text, source_entry
from medtune_core.errors import MedtuneError
from medtune_core.formats import Conversation, MultipleChoice, PreferencePair, Record, TextDocument
from medtune_core.hashing import file_sha256
from medtune_core.recall.benchmarks import expand_files, options_text

POOL_SUFFIXES = (".jsonl", ".json", ".csv", ".txt")
ID_PREFIX_CHARS = 12
PLAN_NAME = "pool_plan.json"


class TextMode(StrEnum):
    """What of a pool row is embedded."""

    QUESTION = "question"  # the (first) user question; an MCQ's question without options
    QUESTION_OPTIONS = "question_options"  # an MCQ's question and options; chats: the first user turn
    FIRST_USER = "first_user"  # the first user turn
    CONVERSATION = "conversation"  # every turn (system prompt left out), an MCQ with its answer


@dataclass(frozen=True)
class PoolRow:
    id: str
    path: Path
    line: int
    record: Record


def row_id(file_sha: str, line: int) -> str:
    return f"{file_sha[:ID_PREFIX_CHARS]}:{line}"


def _first_user(messages: list[Any]) -> str:
    return next((m.content for m in messages if m.role == "user"), "")


def record_text(record: Record, mode: TextMode | str = TextMode.FIRST_USER) -> str:
    """The text of ``record`` that ``mode`` asks for."""
    mode = TextMode(mode)
    if isinstance(record, Conversation):
        if mode is TextMode.CONVERSATION:
            return "\n".join(m.content for m in record.turns)
        return _first_user(record.messages)
    if isinstance(record, PreferencePair):
        if mode is TextMode.CONVERSATION:
            return "\n".join([*(m.content for m in record.prompt if m.role != "system"), record.chosen])
        return _first_user(record.prompt)
    if isinstance(record, MultipleChoice):
        if mode is TextMode.QUESTION:
            return record.question
        text = f"{record.question}\n{options_text(record)}"
        if mode is TextMode.CONVERSATION and record.answer_text:
            text += f"\n{record.answer}. {record.answer_text}"
        return text
    if isinstance(record, TextDocument):
        return record.text
    raise MedtuneError(f"unsupported record {type(record).__name__}")


def full_text(record: Record) -> str:
    """Everything a row says (what decontamination checks)."""
    if isinstance(record, Conversation):
        return "\n".join(m.content for m in record.messages)
    return record_text(record, TextMode.CONVERSATION)


def pool_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    return expand_files(paths, POOL_SUFFIXES)


def iter_pool(
    paths: Iterable[str | os.PathLike[str]],
    *,
    fmt: str | None = None,
    policy: Policy | str = Policy.SKIP,
    readers: list[DatasetReader] | None = None,
    rejects_dir: str | os.PathLike[str] | None = None,
) -> Iterator[PoolRow]:
    """Stream every valid row of the pool files (bad rows skipped and counted by default).

    ``readers`` (when given) collects the readers, whose ``stats`` hold the counts once the stream is exhausted.
    """
    for path in pool_files(paths):
        rejects = Path(rejects_dir) / (path.name + ".rejects.jsonl") if rejects_dir else None
        reader = DatasetReader(path, fmt, policy=policy, rejects_path=rejects)
        if readers is not None:
            readers.append(reader)
        sha = file_sha256(path)
        for line, record in reader.iter_with_lines():
            yield PoolRow(row_id(sha, line), path, line, record)


def select_rows(
    paths: Iterable[str | os.PathLike[str]], ids: Iterable[str], *, fmt: str | None = None
) -> dict[str, PoolRow]:
    """The pool rows whose ids are in ``ids``, in one streaming pass (files whose prefix is not wanted are skipped)."""
    wanted = set(ids)
    prefixes = {i.split(":", 1)[0] for i in wanted}
    found: dict[str, PoolRow] = {}
    for path in pool_files(paths):
        if file_sha256(path)[:ID_PREFIX_CHARS] not in prefixes:
            continue
        for row in iter_pool([path], fmt=fmt):
            if row.id in wanted:
                found[row.id] = row
                if len(found) == len(wanted):
                    return found
    return found


@dataclass
class PoolPlan:
    """The pool split into text shards: what each shard file holds and where the rows came from."""

    shards: list[str]
    shard_rows: list[int]
    rows: int
    text_mode: str
    shard_size: int
    sources: list[dict[str, Any]] = field(default_factory=list)
    empty_texts: int = 0

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        target = Path(out_dir) / PLAN_NAME
        atomic_write_text(target, json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n")
        return target

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str]) -> PoolPlan:
        return cls(**json.loads((Path(out_dir) / PLAN_NAME).read_text(encoding="utf-8")))


def split_pool(
    paths: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    text_mode: TextMode | str = TextMode.FIRST_USER,
    shard_size: int = 50_000,
    fmt: str | None = None,
    max_rows: int | None = None,
) -> PoolPlan:
    """Stream the pool once and write the texts to embed as shards of ``shard_size`` rows.

    Bad rows are skipped and written to ``<out_dir>/<file>.rejects.jsonl``; rows with nothing to embed are
    skipped and counted. Shards are written atomically and deterministically (same pool, same bytes).
    """
    if shard_size < 1:
        raise MedtuneError("shard_size must be at least 1")
    files = pool_files(paths)
    nonempty = [f for f in files if _has_content(f)]
    if not nonempty:
        raise MedtuneError(f"the pool is empty: {', '.join(str(f) for f in files)} hold no row")
    out = Path(out_dir)
    created = not out.exists()
    try:
        return _split(nonempty, out, TextMode(text_mode), shard_size, fmt, max_rows)
    except MedtuneError:
        if created:  # nothing left behind but what says why: the rejects of a pool without one valid row
            for f in out.glob("texts-*.jsonl"):
                f.unlink()
        raise


def _has_content(path: Path) -> bool:
    """Whether a file holds anything but whitespace (read in blocks: pools are large)."""
    with open(path, "rb") as fh:
        while block := fh.read(1 << 16):
            if block.strip():
                return True
    return False


def _split(
    paths: list[Path], out: Path, mode: TextMode, shard_size: int, fmt: str | None, max_rows: int | None
) -> PoolPlan:
    out.mkdir(parents=True, exist_ok=True)
    readers: list[DatasetReader] = []
    shards: list[str] = []
    shard_rows: list[int] = []
    buf: list[str] = []
    rows = empty = 0

    def flush() -> None:
        name = f"texts-{len(shards):05d}.jsonl"
        with atomic_write(out / name) as fh:
            fh.writelines(buf)
        shards.append(name)
        shard_rows.append(len(buf))
        buf.clear()

    for row in iter_pool(paths, fmt=fmt, readers=readers, rejects_dir=out):
        if max_rows is not None and rows >= max_rows:
            break
        text = record_text(row.record, mode).strip()
        if not text:
            empty += 1
            continue
        buf.append(json.dumps({"id": row.id, "text": text}, ensure_ascii=False) + "\n")
        rows += 1
        if len(buf) >= shard_size:
            flush()
    if buf:
        flush()
    if rows == 0:
        raise MedtuneError("the pool is empty: no row has text to embed (see the rejects files)")
    sources = []
    for reader in readers:
        entry = source_entry(reader)
        entry["rejects_path"] = str(out / (reader.path.name + ".rejects.jsonl"))
        sources.append(entry)
    plan = PoolPlan(shards, shard_rows, rows, mode.value, shard_size, sources, empty)
    plan.save(out)
    return plan


def read_text_shard(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """The ids and texts of one text shard."""
    ids, texts = [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            item = json.loads(line)
            ids.append(item["id"])
            texts.append(item["text"])
    return ids, texts


__all__ = [
    "PoolPlan",
    "PoolRow",
    "TextMode",
    "full_text",
    "iter_pool",
    "pool_files",
    "read_text_shard",
    "record_text",
    "row_id",
    "select_rows",
    "split_pool",
]
