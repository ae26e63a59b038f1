"""How varied a set of synthesized answers is: the share of samples with no earlier near neighbour.

A template that fills the same sentence with different numbers gives answers that differ only in their digits; a
model trained on them learns the sentence, not the medicine. The figure used throughout the project is:

    novelty = share of samples whose output has no *earlier* sample at character 3-gram Jaccard >= 0.8,
              digits stripped, outputs only (the input is drawn from the vocabularies and varies anyway).

It is computed exactly (not estimated by MinHash): every pairwise intersection of shingle sets comes from one
matrix product (see :func:`novelty_flags`); 1,000 samples take well under a second.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import sparse

from medtune_core.synthesis.base import canonical_json

#: The figure's settings: character n-grams, the Jaccard at which an earlier sample counts as a near copy.
NGRAM = 3
NEAR = 0.8
_DIGITS = re.compile(r"[0-9０-９]+")


def output_text(output: Any) -> str:
    """The text the figure compares: the answer as canonical JSON without digits."""
    text = output if isinstance(output, str) else canonical_json(output)
    return _DIGITS.sub("", text)


def _shingles(text: str, n: int) -> set[str]:
    return {text[i : i + n] for i in range(max(1, len(text) - n + 1))}


def novelty_flags(texts: Sequence[str], *, ngram: int = NGRAM, near: float = NEAR) -> list[bool]:
    """For each text (in order): True when no earlier text reaches Jaccard ``near`` with it (exact).

    Every pairwise intersection size comes from one product of the 0/1 text x shingle matrix with itself: shingles
    most texts share (JSON keys, template words) as a dense block (one BLAS product), the rest sparse, where each
    shingle costs the square of the few texts that have it."""
    if not texts:
        return []
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for r, text in enumerate(texts):
        for g in _shingles(text, ngram):
            rows.append(r)
            cols.append(vocab.setdefault(g, len(vocab)))
    m = sparse.csc_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(texts), len(vocab)))
    df = np.diff(m.indptr)
    common = df > max(8, len(texts) // 10)
    dense = m[:, common].toarray()
    rare = m[:, ~common].tocsr()
    inter = dense @ dense.T + (rare @ rare.T).toarray()
    sizes = np.diag(inter)
    jaccard = inter / (sizes[:, None] + sizes[None, :] - inter)
    earlier = np.tril(jaccard >= near - 1e-6, k=-1)  # [i, j]: j < i and a near copy
    return [not bool(row.any()) for row in earlier]


def novelty(outputs: Iterable[Any], *, ngram: int = NGRAM, near: float = NEAR) -> float:
    """Share (0..1) of ``outputs`` (dicts or JSON text) with no earlier neighbour at Jaccard >= ``near``."""
    texts = [output_text(o) for o in outputs]
    flags = novelty_flags(texts, ngram=ngram, near=near)
    return sum(flags) / len(flags) if flags else 1.0


#: The summary's figure is taken over the first this-many samples of a file (the matrix grows with the square).
SUMMARY_SAMPLES = 1000


def summary_novelty(outputs: Sequence[Any]) -> float | None:
    """:func:`novelty` of the first :data:`SUMMARY_SAMPLES` outputs (None without any), rounded for a report."""
    return round(novelty(outputs[:SUMMARY_SAMPLES]), 4) if outputs else None
