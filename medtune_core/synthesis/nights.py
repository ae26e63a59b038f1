"""Nights don't repeat: a dated (nightly) run drops samples that near-copy an earlier night's in the same folder.

Each night writes into ``<folder>/<YYYYMMDD>/``; beside those dated folders, ``<folder>/.minhash/<agent>_<source>/``
keeps one small file per night with the MinHash signatures of the samples it wrote (``<YYYYMMDD>.npz``). Before a
night writes an agent's file, its samples are looked up in a MinHash LSH index of every *earlier* night (by folder
name, so a re-run of an old night never compares against later ones, and a retry of tonight replaces tonight's
entry rather than matching itself); a sample whose estimated Jaccard with an earlier one reaches the run's
``dedup_threshold`` is rejected as ``duplicate:previous_night`` and named in the rejects file. The signatures are
those of the within-run deduplication (:func:`medtune_core.synthesis.postprocess.minhash` of ``dedup_text``), so
"near copy" means the same thing within a night and across nights.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from datasketch import LeanMinHash, MinHashLSH

from medtune_core.dataio import atomic_write
from medtune_core.synthesis.base import Sample
from medtune_core.synthesis.postprocess import DedupConfig, PostprocessResult, Reject, dedup_text, minhash

INDEX_DIR = ".minhash"
REASON = "duplicate:previous_night"


def index_dir(night_dir: str | os.PathLike[str], agent: str, source: str) -> Path:
    """Where the signatures of ``agent``/``source`` live for the dated folder ``night_dir`` (beside it)."""
    return Path(night_dir).parent / INDEX_DIR / f"{agent}_{source}"


def _load(path: Path) -> tuple[list[str], np.ndarray, str]:
    with np.load(path, allow_pickle=False) as data:
        return [str(x) for x in data["ids"]], data["hashvalues"], str(data["scheme"])


def _save(path: Path, ids: Sequence[str], hashvalues: np.ndarray, scheme: str) -> None:
    """Signatures with the hashing scheme of the datasketch that made them (only equal schemes are compared)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, ids=np.array(list(ids), dtype=str), hashvalues=hashvalues, scheme=np.array(scheme))
    with atomic_write(path, mode="wb") as fh:
        fh.write(buf.getvalue())


def drop_previous_nights(
    night_dir: str | os.PathLike[str],
    agent: str,
    source: str,
    samples: Sequence[Sample],
    cfg: DedupConfig | None = None,
) -> PostprocessResult:
    """``samples`` minus near copies of earlier nights' samples; records tonight's kept samples in the index."""
    cfg = cfg or DedupConfig()
    night = Path(night_dir).name
    scheme = str(getattr(minhash("", cfg), "scheme", "") or "")
    lean = {"scheme": scheme} if scheme else {}  # datasketch >= 2 asks for the scheme of stored hash values
    folder = index_dir(night_dir, agent, source)
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    earlier: dict[str, LeanMinHash] = {}
    for f in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        if f.stem >= night:
            continue
        ids, values, stored = _load(f)
        if values.shape[1:] != (cfg.num_perm,) or stored != scheme:
            continue  # another num_perm or hashing scheme: not comparable
        for key, hv in zip(ids, values, strict=True):
            m = LeanMinHash(seed=1, hashvalues=hv, **lean)
            earlier[f"{f.stem}/{key}"] = m
            lsh.insert(f"{f.stem}/{key}", m, check_duplication=False)
    result = PostprocessResult()
    signatures = []
    for s in samples:
        m = minhash(dedup_text(s), cfg)
        hit = None
        for key in lsh.query(m) if earlier else []:
            sim = m.jaccard(earlier[key])
            if sim >= cfg.threshold:
                hit = (key, sim)
                break
        if hit is None:
            result.accepted.append(s)
            signatures.append(m.hashvalues)
        else:
            result.rejects.append(Reject.of(s, REASON, f"near copy of {hit[0]} (estimated Jaccard {hit[1]:.2f})"))
    dtype = signatures[0].dtype if signatures else np.uint64  # uint32 with datasketch >= 2: half the disk
    values = np.array(signatures, dtype=dtype).reshape(len(signatures), cfg.num_perm)
    _save(folder / f"{night}.npz", [s.id for s in result.accepted], values, scheme)
    return result
