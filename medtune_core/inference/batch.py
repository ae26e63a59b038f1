"""Batch inference: prompts from any record format → a JSONL file of generations, resumable.

Every input record becomes a prompt (:func:`prompt_of`): a conversation up to its last user turn (the assistant
turn after it, if any, is kept as ``reference``), a preference pair's prompt (``reference``: the chosen answer), a
multiple-choice question in the Chinese MCQ template (``reference``: the answer letter), a text document as one
user turn.

The output is appended batch by batch, each batch flushed and ``fsync``-ed, one row per input record in input
order::

    {"index": 0, "line": 1, "prompt_sha": "...", "messages": [...], "reference": "...", "output": "<think>...",
     "reasoning": "...", "answer": "...", "finish_reason": "stop", "usage": {...}, "meta": {...}}

Restarting with the same input resumes: complete rows are counted, a torn last line (a crash mid-write) is
dropped, and the first pending record is the next one. The rows already written must belong to the same input
(their ``prompt_sha`` is checked), otherwise the run stops instead of mixing two inputs in one file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medtune_core.errors import MedtuneError
from medtune_core.formats import Conversation, Message, MultipleChoice, PreferencePair, TextDocument
from medtune_core.inference.generate import Generator, SamplingParams
from medtune_core.inference.think import split_think

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]
    reference: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def prompt_of(record: Any, system: str | None = None) -> Prompt:
    """The prompt (messages ending with a user turn) and reference answer of a canonical record."""
    if isinstance(record, Conversation):
        msgs = list(record.messages)
        last_user = max((i for i, m in enumerate(msgs) if m.role == "user"), default=-1)
        if last_user < 0:
            raise MedtuneError("conversation without a user turn")
        after = msgs[last_user + 1] if last_user + 1 < len(msgs) else None
        ref = after.content if after is not None and after.role == "assistant" else None
        prompt_msgs, extra = msgs[: last_user + 1], record.extra
    elif isinstance(record, PreferencePair):
        prompt_msgs, ref, extra = list(record.prompt), record.chosen, record.extra
    elif isinstance(record, MultipleChoice):
        from medtune_core.formats import mcq_to_conversation

        conv = mcq_to_conversation(record)
        prompt_msgs = [m for m in conv.messages if m.role != "assistant"]
        ref, extra = record.answer, record.extra
    elif isinstance(record, TextDocument):
        prompt_msgs, ref, extra = [Message("user", record.text)], None, record.extra
    else:
        raise MedtuneError(f"cannot make a prompt of a {type(record).__name__}")
    messages = [{"role": m.role, "content": m.content} for m in prompt_msgs]
    if system is not None:
        messages = [{"role": "system", "content": system}, *[m for m in messages if m["role"] != "system"]]
    return Prompt(messages, ref, extra)


def prompt_sha(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()[:16]


@dataclass
class ResumeState:
    """What an existing output holds: ``rows`` complete rows, and whether a torn last line was dropped."""

    rows: int = 0
    torn_dropped: bool = False
    first_sha: str | None = None
    last_sha: str | None = None


def scan_output(path: Path, *, repair: bool = True) -> ResumeState:
    """Count the complete rows of ``path``; with ``repair``, cut a torn last line off the file.

    A line is complete when it ends with a newline and parses as the row with the expected ``index``. A bad line
    anywhere but at the end is not a crash artefact: it raises instead of being silently dropped.
    """
    state = ResumeState()
    if not path.exists():
        return state
    good_end = 0
    with open(path, "rb") as fh:
        data = fh.read()
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        line = data[pos : (nl if nl >= 0 else len(data))]
        row = None
        if nl >= 0:
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                row = None
        ok = isinstance(row, dict) and row.get("index") == state.rows
        if not ok:
            rest = data[nl + 1 :] if nl >= 0 else b""
            if rest.strip():
                raise MedtuneError(
                    f"{path}:{state.rows + 1}: index: not a complete row of this output, and more rows follow; "
                    "the file was edited or belongs to another run (pass overwrite to start over)"
                )
            state.torn_dropped = bool(line.strip()) or nl < 0
            break
        state.rows += 1
        if state.rows == 1:
            state.first_sha = row.get("prompt_sha")
        state.last_sha = row.get("prompt_sha")
        good_end = nl + 1
        pos = nl + 1
    if good_end < len(data):
        state.torn_dropped = state.torn_dropped or bool(data[good_end:].strip())
        if repair:
            with open(path, "r+b") as fh:
                fh.truncate(good_end)
                fh.flush()
                os.fsync(fh.fileno())
            log.warning("%s: dropped a torn last line (%d bytes) before resuming", path, len(data) - good_end)
    return state


@dataclass
class BatchReport:
    output: str
    rows: int = 0  # rows in the output at the end
    resumed_from: int = 0  # rows that were already there
    generated: int = 0
    torn_line_dropped: bool = False
    rejected: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _records(path: Path, fmt: str | None, policy: str, rejects: Path | None) -> tuple[Any, Iterator[tuple[int, Any]]]:
    from medtune_core.dataio import DatasetReader, Policy

    reader = DatasetReader(path, fmt, policy=Policy(policy), rejects_path=rejects)
    return reader, reader.iter_with_lines()


def run_batch_inference(
    generator: Generator,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    params: SamplingParams | None = None,
    *,
    batch_size: int = 8,
    fmt: str | None = None,
    policy: str = "strict",
    system: str | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> BatchReport:
    """Generate an answer for each record of ``input_path`` into ``output_path`` (JSONL), resuming a partial output."""
    if batch_size < 1:
        raise MedtuneError("batch_size must be at least 1")
    params = params or SamplingParams()
    inp, out = Path(input_path), Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if overwrite and out.exists():
        out.unlink()
    state = scan_output(out)
    report = BatchReport(
        output=str(out), rows=state.rows, resumed_from=state.rows, torn_line_dropped=state.torn_dropped
    )
    if state.rows:
        log.info("%s: %d rows already written; resuming at row %d", out, state.rows, state.rows + 1)
    start = time.perf_counter()
    rejects = out.with_name(out.name + ".rejects.jsonl") if policy == "skip" else None
    reader, records = _records(inp, fmt, policy, rejects)

    index = 0
    pending: list[tuple[int, int, Prompt]] = []

    def flush(fh: Any) -> None:
        gens = generator.generate([p.messages for _, _, p in pending], params)
        lines = []
        for (idx, line, p), g in zip(pending, gens, strict=True):
            split = split_think(g.text)
            row = {
                "index": idx,
                "line": line,
                "prompt_sha": prompt_sha(p.messages),
                "messages": p.messages,
                "reference": p.reference,
                "output": g.text,
                "reasoning": split.reasoning,
                "answer": split.answer,
                "finish_reason": g.finish_reason,
                "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens},
            }
            for key in ("meta", "id"):
                if key in p.extra:
                    row[key] = p.extra[key]
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            report.prompt_tokens += g.prompt_tokens
            report.completion_tokens += g.completion_tokens
            report.finish_reasons[g.finish_reason] = report.finish_reasons.get(g.finish_reason, 0) + 1
        fh.write("".join(lines))
        fh.flush()
        os.fsync(fh.fileno())
        report.generated += len(pending)
        report.rows += len(pending)
        pending.clear()
        if on_batch is not None:
            on_batch(report)

    with open(out, "a", encoding="utf-8") as fh:
        for line, record in records:
            if limit is not None and index >= limit:
                break
            try:
                prompt = prompt_of(record, system)
            except MedtuneError as exc:
                raise MedtuneError(f"{inp}:{line}: prompt: {exc}") from None
            if index < state.rows:
                if index in (0, state.rows - 1):
                    expected = state.first_sha if index == 0 else state.last_sha
                    if expected is not None and prompt_sha(prompt.messages) != expected:
                        raise MedtuneError(
                            f"{out}:{index + 1}: prompt_sha: the existing output was made from another input or "
                            f"system prompt than {inp}; pass overwrite to start over or choose another output"
                        )
                index += 1
                continue
            pending.append((index, line, prompt))
            index += 1
            if len(pending) >= batch_size:
                flush(fh)
        if pending:
            flush(fh)
    if index < state.rows:
        raise MedtuneError(f"{out}: has {state.rows} rows but {inp} only {index} records; wrong output file?")
    report.rejected = reader.stats.rejected
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def read_generations(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a generations file (complete lines only)."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n") and line.strip():
                rows.append(json.loads(line))
    return rows
