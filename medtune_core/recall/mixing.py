"""Training set and control set: recalled rows (decontaminated) + a seeded share of random pool rows.

- The recalled rows that survive decontamination are kept (``R`` of them).
- ``M = round(R * mix_ratio / (1 - mix_ratio))`` random rows are added from the pool rows that were neither recalled
  nor caught by the leakage guard, each also decontaminated, so random rows make ``mix_ratio`` of the final set
  (the original recipe's anti-cheating advice: 20-30% random medical data).
- The control set has the same size, drawn at random from every pool row not caught by the guard (decontaminated),
  so "recalled vs random" compares equal amounts of data.

Both sets are shuffled with the seed and written in ShareGPT or messages format with a manifest; a
``<file>.selection.jsonl`` beside each says where every row came from (pool id, recalled or random, score, questions).
The same inputs and seed give the same bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medtune_core.dataio import Manifest, atomic_write, write_records
from medtune_core.errors import MedtuneError
from medtune_core.formats import Conversation, RecordKind, to_kind
from medtune_core.recall.decontam import Contamination, save_contaminations
from medtune_core.recall.pool import PoolRow, full_text, select_rows
from medtune_core.recall.search import RecalledRow

OUTPUT_FORMATS = ("sharegpt", "messages")


@dataclass(frozen=True)
class MixConfig:
    mix_ratio: float = 0.25
    seed: int = 0
    output_format: str = "sharegpt"
    control: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.mix_ratio < 1.0:
            raise MedtuneError(f"mix_ratio must be within [0, 1), got {self.mix_ratio}")
        if self.output_format not in OUTPUT_FORMATS:
            raise MedtuneError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")


@dataclass
class MixOutcome:
    train: Manifest
    control: Manifest | None
    recalled_kept: int
    random_added: int
    contaminated: list[Contamination] = field(default_factory=list)
    unconvertible: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "train_rows": self.train.rows,
            "recalled_kept": self.recalled_kept,
            "random_added": self.random_added,
            "random_share": round(self.random_added / self.train.rows, 6) if self.train.rows else 0.0,
            "control_rows": self.control.rows if self.control else None,
            "contaminated_dropped": len(self.contaminated),
            "unconvertible_dropped": len(self.unconvertible),
            "warnings": self.warnings,
        }


class TextMatcher(Protocol):
    """What decontamination asks of a test set: the evidence and question id a text copies, or None."""

    def match(self, text: str) -> tuple[str, str] | None: ...


#: Warn when decontamination drops more than this share of the recalled rows: the threshold then recalls copies.
NEAR_COPY_WARN_SHARE = 0.5


def random_count(recalled: int, ratio: float) -> int:
    return round(recalled * ratio / (1.0 - ratio)) if ratio else 0


class _Checker:
    """Decontaminate and convert pool rows to chat, remembering what was dropped and why."""

    def __init__(self, index: TextMatcher) -> None:
        self.index = index
        self.contaminated: dict[str, Contamination] = {}
        self.unconvertible: list[str] = []

    def check(self, row: PoolRow) -> Conversation | None:
        hit = self.index.match(full_text(row.record))
        if hit is not None:
            self.contaminated.setdefault(row.id, Contamination(row.id, hit[0], hit[1]))
            return None
        try:
            conv = to_kind(row.record, RecordKind.CHAT)
        except MedtuneError:
            self.unconvertible.append(row.id)
            return None
        assert isinstance(conv, Conversation)
        return conv


def _take_clean(
    candidates: Sequence[str], need: int, pool_paths: Sequence[Path], checker: _Checker, fmt: str | None
) -> Iterator[tuple[str, Conversation]]:
    """Clean rows from ``candidates`` in order until ``need`` are found; the pool is streamed once per chunk."""
    found, start = 0, 0
    while found < need and start < len(candidates):
        chunk = list(candidates[start : start + max(2 * (need - found), 256)])
        start += len(chunk)
        rows = select_rows(pool_paths, chunk, fmt=fmt)
        for rid in chunk:
            if found >= need:
                return
            row = rows.get(rid)
            if row is None:
                continue
            conv = checker.check(row)
            if conv is not None:
                found += 1
                yield rid, conv


def _write_set(
    path: Path,
    items: list[tuple[str, Conversation, dict[str, Any]]],
    config: MixConfig,
    rng: np.random.Generator,
    extra: dict[str, Any],
) -> Manifest:
    order = rng.permutation(len(items)) if items else np.array([], dtype=np.int64)
    shuffled = [items[i] for i in order.tolist()]
    selection = path.with_name(path.name + ".selection.jsonl")
    with atomic_write(selection) as fh:
        for rid, _, info in shuffled:
            fh.write(json.dumps({"id": rid, **info}, ensure_ascii=False) + "\n")
    return write_records(
        path, (conv for _, conv, _ in shuffled), config.output_format, extra={**extra, "selection": str(selection)}
    )


def build_training_sets(
    pool_paths: Sequence[str | os.PathLike[str]],
    pool_ids: Sequence[str],
    recalled: Sequence[RecalledRow],
    leaked_ids: set[str],
    index: TextMatcher,
    out_dir: str | os.PathLike[str],
    config: MixConfig,
    *,
    fmt: str | None = None,
    sources: Sequence[dict[str, Any]] = (),
) -> MixOutcome:
    """Decontaminate the recalled rows, mix in random rows, write ``train.jsonl`` and ``control.jsonl``.

    ``pool_ids`` are the ids of every embedded pool row, in pool order (the universe random rows come from).
    """
    out = Path(out_dir)
    paths = [Path(p) for p in pool_paths]
    checker = _Checker(index)
    warnings: list[str] = []
    by_id = {r.id: r for r in recalled}
    kept = list(_take_clean([r.id for r in recalled], len(recalled), paths, checker, fmt))
    r_count = len(kept)
    dropped = sum(1 for r in recalled if r.id in checker.contaminated)
    if recalled and dropped / len(recalled) > NEAR_COPY_WARN_SHARE:
        warnings.append(
            f"{dropped} of {len(recalled)} recalled rows ({dropped / len(recalled):.0%}) copy a test item and were "
            "dropped: the threshold recalls mostly near copies of the benchmark; raise similarity_threshold's "
            "distance from the guard or check the pool for a copy of the benchmark"
        )
    m_count = random_count(r_count, config.mix_ratio)
    rng = np.random.default_rng(config.seed)
    excluded = set(by_id) | leaked_ids
    eligible = [i for i in pool_ids if i not in excluded]
    perm = [eligible[i] for i in rng.permutation(len(eligible)).tolist()]
    randoms = list(_take_clean(perm, m_count, paths, checker, fmt))
    if len(randoms) < m_count:
        warnings.append(f"the pool had only {len(randoms)} clean non-recalled rows for {m_count} random rows")
    items = [
        (rid, conv, {"origin": "recalled", "score": round(by_id[rid].score, 6), "questions": by_id[rid].questions})
        for rid, conv in kept
    ]
    items += [(rid, conv, {"origin": "random"}) for rid, conv in randoms]
    common = {"mix_ratio": config.mix_ratio, "seed": config.seed, "sources": list(sources)}
    train = _write_set(out / "train.jsonl", items, config, rng, {**common, "recalled": r_count, "random": len(randoms)})
    control = None
    if config.control:
        crng = np.random.default_rng([config.seed, 1])
        universe = [i for i in pool_ids if i not in leaked_ids]
        cperm = [universe[i] for i in crng.permutation(len(universe)).tolist()]
        citems = [
            (rid, conv, {"origin": "control"}) for rid, conv in _take_clean(cperm, len(items), paths, checker, fmt)
        ]
        if len(citems) < len(items):
            warnings.append(f"the control set has {len(citems)} rows, fewer than the training set's {len(items)}")
        control = _write_set(out / "control.jsonl", citems, config, crng, {**common, "control_for": "train.jsonl"})
    contaminated = sorted(checker.contaminated.values(), key=lambda c: c.row_id)
    save_contaminations(contaminated, out / "decontaminated.jsonl")
    outcome = MixOutcome(train, control, r_count, len(randoms), contaminated, checker.unconvertible, warnings)
    outcome.paths = {"train": str(out / "train.jsonl"), "decontaminated": str(out / "decontaminated.jsonl")}
    if control is not None:
        outcome.paths["control"] = str(out / "control.jsonl")
    return outcome
