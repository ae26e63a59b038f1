"""Decontamination: drop training rows that copy a test item, verbatim or nearly.

Two checks, both on text (they do not depend on the embedding backend):

- **Long overlaps** (:class:`NgramIndex`): every test text (question, each option, explanation) is cut into tokens
  (a Chinese/Japanese character is a token, a run of other letters or digits is one word; case, spacing and
  punctuation ignored) and its ``n``-token windows (default 13, GPT-3's 13-gram rule) go into a set; a row is
  contaminated when any ``n``-token window of its whole text is in that set. Texts shorter than ``n`` tokens add
  nothing here (a short option such as "肋胸膜" would match innocent rows); 13 English letters are two words, hence
  words, not characters, for scripts that separate them.
- **Near copies of the question** (:class:`NearCopyIndex`): the question, normalised harder (NFKC, lowercase, every
  character that is not a letter or digit dropped, so punctuation, spacing and whatever follows, such as options in
  another order, do not matter), must not appear in the row's normalised text within a small edit budget scaled to its
  length: none below 6 characters, 1 edit up to 14, 2 from 15 on; a question under 6 characters also matches a whole
  line of the row that is the question with one edit. This catches short questions (a quarter of CMMLU's questions
  are under 13 characters) and copies with a character or two changed. Candidates are found by shared
  character bigrams (an edit destroys at most two), then checked with rapidfuzz's best-window alignment.

:class:`Decontaminator` runs both; each dropped row is listed with its evidence and the question.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtune_core.dataio import atomic_write
from medtune_core.errors import MedtuneError
from medtune_core.formats import MultipleChoice
from medtune_core.recall.benchmarks import contamination_texts

_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+")


def normalize_for_overlap(text: str) -> str:
    return "".join(text.lower().split())


def overlap_tokens(text: str) -> list[str]:
    """CJK characters one by one, other letters and digits as words; lowercase, NFKC, punctuation dropped."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def _join(tokens: Sequence[str]) -> str:
    return " ".join(tokens) if any(len(t) > 1 for t in tokens) else "".join(tokens)


def normalize_strict(text: str) -> str:
    """NFKC, lowercase, only letters and digits (punctuation, symbols and spaces dropped): what a near copy keeps."""
    return "".join(c for c in unicodedata.normalize("NFKC", text).lower() if unicodedata.category(c)[0] in "LN")


#: Questions shorter than this have no edit budget inside a row (0 edits); a line that is the question with one edit
#: still counts (:meth:`NearCopyIndex._short_line`).
SHORT_CHARS = 6


def edit_budget(length: int) -> int:
    """Edits a near copy of a question of ``length`` normalised characters may carry and still count as a copy."""
    return 0 if length < 6 else 1 if length < 15 else 2


@dataclass(frozen=True)
class Contamination:
    row_id: str
    ngram: str
    question: str


class NgramIndex:
    """The token n-grams of a set of evaluation questions, each mapped to the first question that has it."""

    def __init__(self, questions: Iterable[MultipleChoice], n: int = 13) -> None:
        if n < 4:
            raise MedtuneError(f"decontamination n-gram length must be at least 4 tokens, got {n}")
        self.n = n
        self.grams: dict[tuple[str, ...], str] = {}
        for q in questions:
            for text in contamination_texts(q):
                tokens = overlap_tokens(text)
                for i in range(len(tokens) - n + 1):
                    self.grams.setdefault(tuple(tokens[i : i + n]), q.id or "")

    def __len__(self) -> int:
        return len(self.grams)

    def match(self, text: str) -> tuple[str, str] | None:
        """The first n-gram of ``text`` found in the evaluation set (as text) and its question id, or None."""
        tokens = overlap_tokens(text)
        grams, n = self.grams, self.n
        for i in range(len(tokens) - n + 1):
            gram = tuple(tokens[i : i + n])
            if gram in grams:
                return _join(gram), grams[gram]
        return None


def _bigrams(text: str) -> set[str]:
    return {text[i : i + 2] for i in range(len(text) - 1)}


class NearCopyIndex:
    """Finds a test question contained in a row's text, up to :func:`edit_budget` edits (see the module doc)."""

    def __init__(self, questions: Iterable[MultipleChoice], min_chars: int = 4) -> None:
        self.ids: list[str] = []
        self.texts: list[str] = []
        #: questions too short for an edit inside a row: matched against whole lines instead, by length
        self.short: dict[int, list[tuple[str, str]]] = {}
        postings: dict[str, list[int]] = {}
        needed: list[int] = []
        for q in questions:
            norm = normalize_strict(q.question)
            if 2 <= len(norm) < SHORT_CHARS:
                self.short.setdefault(len(norm), []).append((norm, q.id or ""))
            if len(norm) < min_chars:
                continue
            qi = len(self.texts)
            self.ids.append(q.id or "")
            self.texts.append(norm)
            grams = _bigrams(norm)
            for g in grams:
                postings.setdefault(g, []).append(qi)
            needed.append(max(1, len(grams) - 2 * edit_budget(len(norm))))
        self.postings = {g: np.asarray(v, dtype=np.int64) for g, v in postings.items()}
        self.needed = np.asarray(needed, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.texts)

    def match(self, text: str) -> tuple[str, str] | None:
        """(the matching window of the row, the question id) of the closest near copy, or None."""
        if self.short:
            found = self._short_line(text)
            if found is not None:
                return found
        norm = normalize_strict(text)
        hits = [self.postings[g] for g in _bigrams(norm) if g in self.postings]
        if not hits:
            return None
        counts = np.bincount(np.concatenate(hits), minlength=len(self.texts))
        for qi in np.nonzero(counts >= self.needed)[0].tolist():
            window = _near_window(self.texts[qi], norm)
            if window is not None:
                return window, self.ids[qi]
        return None

    def _short_line(self, text: str) -> tuple[str, str] | None:
        """A line of ``text`` that is a short question with at most one edit (none below 4 characters): "肾在液某"
        alone on a line copies "肾在液为", while a row merely mentioning "肾在液" does not."""
        from rapidfuzz.distance import Levenshtein

        for line in text.splitlines():
            norm = normalize_strict(line)
            if not 2 <= len(norm) <= SHORT_CHARS:
                continue
            for length in (len(norm) - 1, len(norm), len(norm) + 1):
                for q, qid in self.short.get(length, ()):
                    k = 1 if len(q) >= 4 else 0
                    if Levenshtein.distance(q, norm, score_cutoff=k) <= k:
                        return norm, qid
        return None


def _near_window(q: str, text: str) -> str | None:
    """The window of ``text`` within :func:`edit_budget` Levenshtein edits of ``q``, or None.

    rapidfuzz's best-window alignment anchors the search; windows of ``len(q) ± budget`` characters starting within
    ``budget`` of the anchor are then measured exactly (an insertion or deletion shifts the best window)."""
    from rapidfuzz import fuzz
    from rapidfuzz.distance import Levenshtein

    k = edit_budget(len(q))
    if q in text:
        return q
    if k == 0:
        return None
    anchor = fuzz.partial_ratio_alignment(q, text).dest_start if len(text) > len(q) else 0
    for start in range(max(0, anchor - k), min(len(text), anchor + k) + 1):
        for width in range(len(q) - k, len(q) + k + 1):
            window = text[start : start + width]
            if len(window) >= len(q) - k and Levenshtein.distance(q, window, score_cutoff=k) <= k:
                return window
    return None


class Decontaminator:
    """Both checks: a long shared n-gram with any test text, or a near copy of a test question."""

    def __init__(self, questions: Sequence[MultipleChoice], n: int = 13, min_chars: int = 4) -> None:
        self.ngrams = NgramIndex(questions, n)
        self.near = NearCopyIndex(questions, min_chars)
        self.n = n

    def match(self, text: str) -> tuple[str, str] | None:
        return self.ngrams.match(text) or self.near.match(text)


def save_contaminations(items: Iterable[Contamination], path: str | os.PathLike[str]) -> Path:
    with atomic_write(path) as fh:
        for c in items:
            fh.write(json.dumps({"id": c.row_id, "ngram": c.ngram, "question": c.question}, ensure_ascii=False) + "\n")
    return Path(path)
