"""Evaluation benchmarks: C-Eval (CSV/JSONL), CMMLU (CSV) and MedQA (JSONL) questions, each keeping its subject.

Parsing is the record formats' job (``mcq_csv``, ``ceval``, ``medqa``); this module only gathers files and folders,
gives every question a stable id and renders the texts that are embedded or checked for contamination.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from medtune_core.dataio import DatasetReader
from medtune_core.errors import MedtuneError
from medtune_core.formats import MultipleChoice, RecordKind
from medtune_core.hashing import file_sha256

BENCHMARK_SUFFIXES = (".csv", ".jsonl", ".json")
SPLIT_NAMES = {"dev", "val", "valid", "validation", "test", "train"}


class EvalTextMode(StrEnum):
    """What of an evaluation question is embedded."""

    QUESTION = "question"
    QUESTION_OPTIONS = "question_options"
    QUESTION_ANSWER = "question_answer"  # the question and its correct option's text


#: The views of a test item the leakage guard compares every pool row with: a copy may carry the question alone, with
#: its options, or with its answer, and each of those is closest to a different view.
GUARD_VIEWS = (EvalTextMode.QUESTION, EvalTextMode.QUESTION_OPTIONS, EvalTextMode.QUESTION_ANSWER)


@dataclass
class Benchmark:
    """The questions of one or more benchmark files, in file order; ``sources`` describe the files."""

    questions: list[MultipleChoice]
    sources: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [q.id or "" for q in self.questions]

    @property
    def subjects(self) -> list[str]:
        return [q.subject or "unknown" for q in self.questions]

    def subject_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.subjects).items()))

    def texts(self, mode: EvalTextMode | str = EvalTextMode.QUESTION) -> list[str]:
        return [question_text(q, mode) for q in self.questions]

    def __len__(self) -> int:
        return len(self.questions)


def expand_files(paths: Iterable[str | os.PathLike[str]], suffixes: Sequence[str]) -> list[Path]:
    """Files named directly, plus the files with one of ``suffixes`` inside named folders (sorted, recursive)."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
            if not found:
                raise MedtuneError(f"{p}: folder holds no {'/'.join(suffixes)} file")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:  # a user error, not a transient one: MedtuneError is never retried
            raise MedtuneError(f"{p}: no such file or folder")
    if not files:
        raise MedtuneError("no input file given")
    return files


def _subject(q: MultipleChoice, path: Path) -> str:
    """The subject is the file stem (as the format derives it); a bare split name (``test.jsonl``) means the folder."""
    subject = q.subject or path.stem
    return path.parent.name if subject.lower() in SPLIT_NAMES else subject


def load_benchmark(
    paths: Iterable[str | os.PathLike[str]],
    *,
    fmt: str | None = None,
    subjects: Iterable[str] | None = None,
    require_answer: bool = True,
) -> Benchmark:
    """Load the multiple-choice questions of files or folders (strict: a bad row names ``path:line``).

    Every question gets the id ``<subject>/<id or line>`` (unique across files) and keeps its subject.
    ``subjects`` keeps only those subjects.
    """
    wanted = set(subjects) if subjects else None
    questions: list[MultipleChoice] = []
    sources: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in expand_files(paths, BENCHMARK_SUFFIXES):
        reader = DatasetReader(path, fmt)
        if reader.format.kind is not RecordKind.MCQ:
            raise MedtuneError(f"{path}: format {reader.format.name!r} is not a multiple-choice format")
        count = 0
        for line, q in reader.iter_with_lines():
            assert isinstance(q, MultipleChoice)
            q.subject = _subject(q, path)
            if wanted is not None and q.subject not in wanted:
                continue
            if require_answer and q.answer is None:
                raise MedtuneError(f"{path}:{line}: answer: missing (an evaluation question needs its answer)")
            qid = f"{q.subject}/{q.id if q.id is not None else line}"
            if qid in seen:
                qid = f"{q.subject}/{path.stem}:{line}"
            seen.add(qid)
            q.id = qid
            questions.append(q)
            count += 1
        sources.append({"path": str(path), "sha256": file_sha256(path), "format": reader.format.name, "rows": count})
    if not questions:
        raise MedtuneError("the benchmark holds no question" + (f" of subjects {sorted(wanted)}" if wanted else ""))
    return Benchmark(questions, sources)


def options_text(q: MultipleChoice) -> str:
    return "\n".join(f"{k}. {v}" for k, v in q.options.items())


def question_text(q: MultipleChoice, mode: EvalTextMode | str = EvalTextMode.QUESTION) -> str:
    mode = EvalTextMode(mode)
    if mode is EvalTextMode.QUESTION_OPTIONS:
        return f"{q.question}\n{options_text(q)}"
    if mode is EvalTextMode.QUESTION_ANSWER and q.answer_text:
        return f"{q.question}\n{q.answer_text}"
    return q.question


def contamination_texts(q: MultipleChoice) -> list[str]:
    """The separate texts a training row must not copy: question, every option, the answer and explanation."""
    texts = [q.question, *q.options.values()]
    if q.explanation:
        texts.append(q.explanation)
    return texts
