"""Post-processing of synthesized samples: schema and quality validation, exact and near-duplicate removal,
reject bookkeeping and few-shot refresh.

Near duplicates are found with MinHash/LSH (``datasketch``) over character n-gram shingles, which work for
Chinese without a word segmenter. Samples are processed in index order and the first of a group is kept,
so the result is deterministic.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from datasketch import MinHash, MinHashLSH
from datasketch.hashfunc import sha1_hash32

from medtune_core.synthesis.base import Agent, Sample, canonical_json
from medtune_core.synthesis.registry import get_agent

_SPACE = re.compile(r"\s+")


@dataclass
class Reject:
    """A sample left out, with why; written to the rejects file beside the output."""

    agent: str
    index: int
    source: str
    reason: str  # "schema" | "quality:<check>" | "duplicate:exact" | "duplicate:near" | "llm:<why>"
    problem: str
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    raw: str | None = None

    def as_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "agent": self.agent,
            "index": self.index,
            "source": self.source,
            "reason": self.reason,
            "problem": self.problem,
            "input": self.input,
        }
        if self.output is not None:
            row["output"] = self.output
        if self.raw is not None:
            row["raw"] = self.raw
        return row

    @classmethod
    def of(cls, sample: Sample, reason: str, problem: str) -> Reject:
        return cls(sample.agent, sample.index, sample.source, reason, problem, sample.input, sample.output, sample.raw)


@dataclass
class DedupConfig:
    """Near-duplicate detection: Jaccard ``threshold`` on character ``ngram`` shingles, ``num_perm`` hashes."""

    threshold: float = 0.9
    ngram: int = 3
    num_perm: int = 128
    near: bool = True


@dataclass
class PostprocessResult:
    accepted: list[Sample] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def reasons(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self.rejects).items()))


def dedup_text(sample: Sample) -> str:
    """The content of a sample (string and number leaves of input and output), whitespace removed."""
    parts: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for k in sorted(v):
                walk(v[k])
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif v is not None:
            parts.append(str(v))

    walk(sample.input)
    walk(sample.output if sample.output is not None else sample.raw)
    return _SPACE.sub("", "|".join(parts))


def shingles(text: str, n: int = 3) -> list[bytes]:
    """Distinct character n-grams of ``text`` in first-seen order."""
    return [g.encode("utf-8") for g in _shingle_strs(text, n)]


def _shingle_strs(text: str, n: int) -> list[str]:
    if len(text) <= n:
        return [text]
    return list(dict.fromkeys([text[i : i + n] for i in range(len(text) - n + 1)]))


def minhash(text: str, cfg: DedupConfig) -> MinHash:
    """MinHash of the text's shingles: the values of ``MinHash(num_perm, seed=1)`` fed with them, made cheaper."""
    m = _minhash_template(cfg.num_perm).copy()
    m.update_batch(shingles(text, cfg.ngram))
    return m


_UNPACK_U32 = struct.Struct("<I").unpack_from


def _sha1_hash32(data: bytes) -> int:
    """``datasketch.hashfunc.sha1_hash32`` (the first 4 bytes of SHA-1, little endian), with less overhead."""
    return _UNPACK_U32(hashlib.sha1(data).digest())[0]


class _Sha1Memo(dict):
    """``shingle (str) -> _sha1_hash32(its UTF-8)``, computed once per distinct shingle: samples of an agent share most
    of theirs (field names, template phrases), so most lookups are a dict hit instead of encoding and a SHA-1."""

    __slots__ = ()

    def __missing__(self, key: str) -> int:
        value = self[key] = _sha1_hash32(key.encode("utf-8"))
        return value


@functools.lru_cache(maxsize=8)
def _default_minhash(num_perm: int) -> MinHash:
    """``MinHash(num_perm, seed=1)``, empty: drawing its permutations costs ~0.2 ms, as much as hashing a sample."""
    return MinHash(num_perm=num_perm, seed=1)


def _new_minhash(num_perm: int, hashfunc: Any) -> MinHash:
    """An empty MinHash with the default's permutations and scheme and ``hashfunc`` in place of the default SHA-1
    hash (the same values); the default itself if datasketch hashes differently."""
    base = _default_minhash(num_perm)
    if base.hashfunc is not sha1_hash32:
        return base
    scheme = getattr(base, "scheme", None)  # datasketch >= 2 needs it with explicit permutations
    extra = {} if scheme is None else {"scheme": scheme}
    return MinHash(num_perm=num_perm, seed=1, hashfunc=hashfunc, permutations=base.permutations, **extra)


@functools.lru_cache(maxsize=8)
def _minhash_template(num_perm: int) -> MinHash:
    return _new_minhash(num_perm, _sha1_hash32)


@functools.lru_cache(maxsize=32)
def _lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands and rows for ``threshold``: datasketch integrates for them (~20-60 ms per index), so once per setting."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


class DuplicateIndex:
    """Exact and near-duplicate detector that keeps the first of each group; feed samples in order."""

    def __init__(self, cfg: DedupConfig | None = None) -> None:
        self.cfg = cfg or DedupConfig()
        self._exact: dict[str, str] = {}
        self._lsh = MinHashLSH(
            threshold=self.cfg.threshold,
            num_perm=self.cfg.num_perm,
            params=_lsh_params(self.cfg.threshold, self.cfg.num_perm),
        )
        self._hashes: dict[str, MinHash] = {}
        self._template = _new_minhash(self.cfg.num_perm, _Sha1Memo().__getitem__)

    def check_and_add(self, key: str, text: str) -> tuple[str, str] | None:
        """None if new (and remembered), else ``(reason, problem)`` naming the earlier sample."""
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if digest in self._exact:
            return "duplicate:exact", f"same content as {self._exact[digest]}"
        self._exact[digest] = key
        if not self.cfg.near:
            return None
        m = self._template.copy()
        m.update_batch(_shingle_strs(text, self.cfg.ngram))
        for other in self._lsh.query(m):
            sim = m.jaccard(self._hashes[other])
            if sim >= self.cfg.threshold:
                return "duplicate:near", f"near copy of {other} (estimated Jaccard {sim:.2f})"
        self._lsh.insert(key, m)
        self._hashes[key] = m
        return None


def validate_samples(agent: Agent | str, samples: Iterable[Sample]) -> PostprocessResult:
    """Schema and quality checks; accepted samples get the normalised output."""
    a = get_agent(agent) if isinstance(agent, str) else agent
    result = PostprocessResult()
    for s in samples:
        if s.output is None and s.raw is None:
            result.rejects.append(Reject.of(s, "llm:no_answer", "no answer"))
            continue
        out, failures = a.validate(s.input, s.output if s.output is not None else s.raw)
        if failures:
            first = failures[0]
            reason = "schema" if first.check == "schema" else f"quality:{first.check}"
            result.rejects.append(Reject.of(s, reason, "; ".join(str(f) for f in failures)))
            continue
        s.output = out
        result.accepted.append(s)
    return result


def deduplicate(samples: Iterable[Sample], cfg: DedupConfig | None = None) -> PostprocessResult:
    """Drop exact and near duplicates (first one kept), in the order given."""
    index = DuplicateIndex(cfg)
    result = PostprocessResult()
    for s in samples:
        hit = index.check_and_add(s.id, dedup_text(s))
        if hit is None:
            result.accepted.append(s)
        else:
            result.rejects.append(Reject.of(s, *hit))
    return result


def postprocess(agent: Agent | str, samples: Iterable[Sample], cfg: DedupConfig | None = None) -> PostprocessResult:
    """Validate, then deduplicate; rejects of both steps together."""
    checked = validate_samples(agent, samples)
    deduped = deduplicate(checked.accepted, cfg)
    return PostprocessResult(deduped.accepted, checked.rejects + deduped.rejects)


def refresh_few_shots(
    agent: Agent | str, samples: Sequence[Sample], k: int | None = None, *, pool: int = 200, apply: bool = False
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pick ``k`` mutually diverse accepted samples as new worked examples (greedy max-min Jaccard distance).

    With ``apply=True`` the agent's few-shot examples are replaced (LLM prompts built afterwards use them).
    """
    a = get_agent(agent) if isinstance(agent, str) else agent
    k = k or a.num_few_shots
    cands = [s for s in samples[:pool] if s.output is not None]
    if not cands:
        return []
    sets = [set(shingles(dedup_text(s))) for s in cands]

    def dist(i: int, j: int) -> float:
        inter = len(sets[i] & sets[j])
        return 1.0 - inter / max(1, len(sets[i] | sets[j]))

    chosen = [0]
    while len(chosen) < min(k, len(cands)):
        best = max(
            (i for i in range(len(cands)) if i not in chosen),
            key=lambda i: (min(dist(i, j) for j in chosen), -i),
        )
        chosen.append(best)
    shots = [(dict(cands[i].input), dict(cands[i].output or {})) for i in chosen]
    if apply:
        a.set_few_shots(shots)
    return shots


def exact_key(sample: Sample) -> str:
    return hashlib.sha256(canonical_json([sample.input, sample.output]).encode("utf-8")).hexdigest()
