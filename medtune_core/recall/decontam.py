"""Decontamination: drop training rows that share a long character n-gram with an evaluation question.

Every evaluation text (question, each option, explanation) is normalised (lowercase, whitespace removed) and its
character ``n``-grams (default 13, as GPT-3's 13-gram rule) go into a set; a candidate row is contaminated when any
``n``-character window of its whole normalised text is in that set. Texts shorter than ``n`` add nothing (a short
option such as "肋胸膜" would match innocent rows). Each dropped row is listed with the n-gram and the question.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from medtune_core.dataio import atomic_write
from medtune_core.errors import MedtuneError
from medtune_core.formats import MultipleChoice
from medtune_core.recall.benchmarks import contamination_texts


def normalize_for_overlap(text: str) -> str:
    return "".join(text.lower().split())


@dataclass(frozen=True)
class Contamination:
    row_id: str
    ngram: str
    question: str


class NgramIndex:
    """The character n-grams of a set of evaluation questions, each mapped to the first question that has it."""

    def __init__(self, questions: Iterable[MultipleChoice], n: int = 13) -> None:
        if n < 4:
            raise MedtuneError(f"decontamination n-gram length must be at least 4 characters, got {n}")
        self.n = n
        self.grams: dict[str, str] = {}
        for q in questions:
            for text in contamination_texts(q):
                norm = normalize_for_overlap(text)
                for i in range(len(norm) - n + 1):
                    self.grams.setdefault(norm[i : i + n], q.id or "")

    def __len__(self) -> int:
        return len(self.grams)

    def match(self, text: str) -> tuple[str, str] | None:
        """The first n-gram of ``text`` found in the evaluation set and its question id, or None."""
        norm = normalize_for_overlap(text)
        grams, n = self.grams, self.n
        for i in range(len(norm) - n + 1):
            gram = norm[i : i + n]
            if gram in grams:
                return gram, grams[gram]
        return None


def save_contaminations(items: Iterable[Contamination], path: str | os.PathLike[str]) -> Path:
    with atomic_write(path) as fh:
        for c in items:
            fh.write(json.dumps({"id": c.row_id, "ngram": c.ngram, "question": c.question}, ensure_ascii=False) + "\n")
    return Path(path)
