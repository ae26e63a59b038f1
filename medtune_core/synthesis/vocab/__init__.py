"""Medical vocabularies the synthesis agents draw from: YAML files in this folder, loaded by :mod:`.models`.

``symptoms.yaml`` (body parts, their symptoms, departments, red flags and follow-up questions; severities;
durations), ``patients.yaml`` (sexes, ages, histories and states with the sex and ages that can have them, current
drugs, sex-specific phrases), ``departments.yaml``, ``diseases.yaml``, ``drugs.yaml`` (the formulary) and
``phrases.yaml``. Dosing notes are the usual adult doses printed on Chinese package inserts; every generated answer
still tells the patient to follow the doctor's orders (遵医嘱).

The vocabulary in use is :func:`current`: the built-in one, or the one a caller chose with
:func:`use_vocabulary` (a hospital's formulary added to it) for the code running inside that block. Agents read it
as ``V.DISEASES``, ``V.DRUG_BY_NAME``, … (module attributes resolved on each access), so a batch generated inside
``use_vocabulary(paths)`` uses those files, whichever thread runs it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from medtune_core.synthesis.vocab.models import (
    BUILTIN_DIR,
    BUILTIN_FILES,
    Condition,
    Disease,
    Drug,
    History,
    State,
    Vocabulary,
    VocabularyError,
    load_vocabulary,
)

__all__ = [
    "BUILTIN_DIR",
    "BUILTIN_FILES",
    "Condition",
    "Disease",
    "Drug",
    "History",
    "State",
    "Vocabulary",
    "VocabularyError",
    "current",
    "load_vocabulary",
    "use_vocabulary",
    "vocabulary_for",
]

_ACTIVE: ContextVar[Vocabulary | None] = ContextVar("medtune_vocabulary", default=None)


@functools.lru_cache(maxsize=16)
def _cached(paths: tuple[str, ...], stamps: tuple[float, ...]) -> Vocabulary:
    return load_vocabulary(paths)


def vocabulary_for(paths: Sequence[str | os.PathLike[str]] = ()) -> Vocabulary:
    """The vocabulary of the built-in files plus ``paths``, loaded once per set of files (reloaded when one changes)."""
    key = tuple(str(Path(p).resolve()) for p in paths)
    stamps = []
    for p in (*(BUILTIN_DIR / n for n in BUILTIN_FILES), *map(Path, key)):
        files = sorted(p.iterdir()) if p.is_dir() else [p]
        stamps += [f.stat().st_mtime_ns if f.exists() else -1 for f in files]
    return _cached(key, tuple(stamps))


_BUILTIN: list[Vocabulary] = []


def current() -> Vocabulary:
    """The vocabulary in use here (see :func:`use_vocabulary`), else the built-in one (loaded once per process)."""
    active = _ACTIVE.get()
    if active is not None:
        return active
    if not _BUILTIN:
        _BUILTIN.append(vocabulary_for(()))
    return _BUILTIN[0]


@contextlib.contextmanager
def use_vocabulary(vocab: Vocabulary | Sequence[str | os.PathLike[str]] | None) -> Iterator[Vocabulary]:
    """Within the block, agents and the clinical checker use ``vocab`` (a loaded one, or extra files / folders)."""
    v = vocab if isinstance(vocab, Vocabulary) else vocabulary_for(vocab or ())
    token = _ACTIVE.set(v)
    try:
        yield v
    finally:
        _ACTIVE.reset(token)


#: The agents' names for parts of the vocabulary (``V.DISEASES`` …), resolved against :func:`current`.
_VIEWS: dict[str, Any] = {
    "DISEASES": lambda v: v.diseases,
    "DISEASE_BY_NAME": lambda v: v.disease_by_name,
    "DRUGS": lambda v: v.drugs,
    "DRUG_BY_NAME": lambda v: v.drug_by_name,
    "BODY_PARTS": lambda v: {k: p.symptoms for k, p in v.body_parts.items()},
    "SEX_ONLY_PARTS": lambda v: {k: p.sex for k, p in v.body_parts.items() if p.sex},
    "DEPARTMENT_BY_PART": lambda v: {k: p.department for k, p in v.body_parts.items()},
    "RED_FLAGS_BY_PART": lambda v: {k: p.red_flags for k, p in v.body_parts.items()},
    "FOLLOW_UP_BY_PART": lambda v: {k: p.follow_ups for k, p in v.body_parts.items()},
    "GENERAL_FOLLOW_UPS": lambda v: v.general_follow_ups,
    "ACCOMPANYING_SYMPTOMS": lambda v: v.accompanying_symptoms,
    "SEVERITY_LEVELS": lambda v: {k: s.level for k, s in v.severities.items()},
    "SEVERITY_PHRASES": lambda v: {k: s.phrases for k, s in v.severities.items()},
    "DURATIONS": lambda v: {k: d.text for k, d in v.durations.items()},
    "DURATION_ONSET": lambda v: {k: d.onset for k, d in v.durations.items()},
    "DURATION_SPOKEN": lambda v: {k: d.spoken for k, d in v.durations.items()},
    "DURATION_CODES": lambda v: list(v.durations),
    "SEXES": lambda v: v.sexes,
    "AGE_RANGE": lambda v: v.age_range,
    "HISTORIES": lambda v: [h.name for h in v.histories],
    "FEMALE_STATES": lambda v: [s.name for s in v.states],
    "NO_HISTORY": lambda v: v.no_history,
    "CURRENT_DRUGS": lambda v: {c.name: c.drug_class for c in v.current_drugs},
    "QUESTION_OPENERS": lambda v: v.question_openers,
    "GENERAL_ADVICE": lambda v: v.general_advice,
    "DISCLAIMERS": lambda v: v.disclaimers,
    "UNSAFE_ADVICE": lambda v: v.unsafe_advice,
    "VAGUE_PHRASES": lambda v: v.vague_phrases,
    "EMPATHY_PHRASES": lambda v: v.empathy_phrases,
}


_VIEW_CACHE: dict[tuple[str, int], tuple[Vocabulary, Any]] = {}


def __getattr__(name: str) -> Any:
    if name not in _VIEWS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    v = current()
    hit = _VIEW_CACHE.get((name, id(v)))
    if hit is None or hit[0] is not v:
        hit = _VIEW_CACHE[(name, id(v))] = (v, _VIEWS[name](v))  # keeps v alive, so its id is not reused
    return hit[1]
