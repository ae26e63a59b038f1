"""Recall: nearest pool rows of every evaluation question, searched shard by shard with faiss.

Per shard an index is built over its float16 vectors (as float32), every question's best rows are searched and merged
into the running table, so memory holds one shard and a ``(questions, k)`` table, never the pool. Then:

- ``similarity_threshold``: a question keeps only rows scoring at least this;
- ``max_similarity`` (leakage guard): a row scoring more than this against ANY view of ANY question (the question,
  the question with its options, the question with its answer; see ``GUARD_VIEWS``) is dropped everywhere (also from
  the random mix and the control). All views are searched in one pass per shard; a view whose ``k`` best rows are all
  above the guard gets an exact range search, so no copy hides beyond the top-k;
- ``max_questions_per_row`` (diversity): pairs are assigned best score first, a question taking at most ``top_k``
  rows and a row serving at most this many questions; a generic row that is "the answer" to hundreds of questions
  gives its places to each question's next rows (``2 * top_k`` are searched for that);
- union + dedup: each kept row once, with its best score and the questions that recalled it.

Scores are cosines, clipped to 1.0 (float16 vectors can overshoot by a few thousandths). With ``index="ivf"`` /
``"hnsw"`` the top-k search is approximate (faster on very large pools); the default ``"flat"`` is exact.
"""

from __future__ import annotations

import io
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtune_core.dataio import atomic_write
from medtune_core.errors import MedtuneError
from medtune_core.recall.store import VectorStore


@dataclass(frozen=True)
class RecallConfig:
    top_k: int = 50
    similarity_threshold: float = 0.75
    max_similarity: float | None = 0.99
    index: str = "flat"  # "flat" (exact), "ivf", "hnsw"
    nlist: int = 1024
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 128
    use_gpu: bool = False  # use GPU faiss when the installed faiss has GPUs
    #: Pool rows per BLAS block in faiss's exact search (its default 1024 makes small GEMMs; 16384 measured 1.6x
    #: faster here and beats a bare ``Q @ P.T``, at 64 MB of scores per 1,000 queries).
    blas_block: int = 16384
    #: A pool row serves at most this many questions (None: no cap).
    max_questions_per_row: int | None = 10

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise MedtuneError("top_k must be at least 1")
        if self.max_similarity is not None and self.max_similarity < self.similarity_threshold:
            raise MedtuneError(
                f"max_similarity {self.max_similarity} is below similarity_threshold {self.similarity_threshold}"
            )
        if self.index not in ("flat", "ivf", "hnsw"):
            raise MedtuneError(f"unknown index {self.index!r} (flat, ivf, hnsw)")
        if self.max_questions_per_row is not None and self.max_questions_per_row < 1:
            raise MedtuneError("max_questions_per_row must be at least 1 (or None: no cap)")

    @property
    def search_k(self) -> int:
        """Rows searched per question: twice ``top_k`` when the cap may hand places on to further rows."""
        return self.top_k * 2 if self.max_questions_per_row is not None else self.top_k


def _build_index(x: np.ndarray, config: RecallConfig) -> Any:
    import faiss

    d = x.shape[1]
    if config.index == "flat" or len(x) < 1000:  # too few rows to train or to be worth an approximate index
        index = faiss.IndexFlatIP(d)
    elif config.index == "ivf":
        nlist = max(1, min(config.nlist, len(x) // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = min(config.nprobe, nlist)
    else:
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(config.ef_search, config.top_k)
    index.add(x)
    if config.use_gpu and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0 and config.index != "hnsw":
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def _merge_topk(
    d1: np.ndarray, i1: np.ndarray, d2: np.ndarray, i2: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two per-query result tables into the best ``k`` (ties broken by lower row index: deterministic)."""
    d = np.concatenate([d1, d2], axis=1)
    i = np.concatenate([i1, i2], axis=1)
    d = np.where(i < 0, -np.inf, d)
    big = np.where(i < 0, np.iinfo(np.int64).max, i)
    order = np.lexsort((big, -d), axis=1)[:, :k]
    return np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)


def search_store(
    queries: np.ndarray,
    store: VectorStore,
    config: RecallConfig,
    guard_queries: Sequence[np.ndarray] = (),
    *,
    k: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[float, int]]]:
    """Top-k over the whole store, shard by shard, plus the leakage guard.

    Returns ``(scores, rows, leaks)``: ``(nq, k)`` scores (clipped to 1.0) and global row indices (-1 where the pool
    is smaller than k) and ``{row: (best score, question index)}`` of every row scoring above ``max_similarity``
    against ``queries`` or any of ``guard_queries`` (other views of the same questions, same order).
    """
    import faiss

    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or (len(store) and q.shape[1] != store.dim):
        raise MedtuneError(f"query vectors of shape {q.shape} do not match the store's dimension {store.dim}")
    extra = [np.ascontiguousarray(g, dtype=np.float32) for g in guard_queries]
    if any(v.shape != q.shape for v in extra):
        raise MedtuneError("every guard view must have one vector per question, like the queries")
    extra = [v for v in extra if not np.array_equal(v, q)]  # the recall view is searched anyway
    old_block = faiss.cvar.distance_compute_blas_database_bs
    faiss.cvar.distance_compute_blas_database_bs = config.blas_block
    try:
        return _search_store(np.concatenate([q, *extra]), len(q), store, config, k or config.top_k)
    finally:
        faiss.cvar.distance_compute_blas_database_bs = old_block


def _search_store(
    q: np.ndarray, nq: int, store: VectorStore, config: RecallConfig, k: int
) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[float, int]]]:
    """One top-k search of every view per shard (one GEMM); the first ``nq`` rows of ``q`` are the recall view."""
    import faiss

    best_d = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), 0), -1, dtype=np.int64)
    for offset, shard, vecs in store.iter_shards():
        if shard.rows == 0:
            continue
        x = np.ascontiguousarray(vecs, dtype=np.float32)
        index = _build_index(x, config)
        d, i = index.search(q, min(k, shard.rows))
        i = np.where(i >= 0, i + offset, -1).astype(np.int64)
        best_d, best_i = _merge_topk(best_d, best_i, np.minimum(d, 1.0), i, k)
        del index, x
    if best_d.shape[1] < k:  # pool smaller than k: pad
        pad = k - best_d.shape[1]
        best_d = np.concatenate([best_d, np.full((len(q), pad), -np.inf, np.float32)], axis=1)
        best_i = np.concatenate([best_i, np.full((len(q), pad), -1, np.int64)], axis=1)
    leaks: dict[int, tuple[float, int]] = {}
    guard = config.max_similarity
    if guard is not None:
        qs, cols = np.nonzero((best_d > guard) & (best_i >= 0))
        for qi, c in zip(qs.tolist(), cols.tolist(), strict=True):
            _note_leak(leaks, int(best_i[qi, c]), float(best_d[qi, c]), qi % nq)
        saturated = np.nonzero(best_d[:, -1] > guard)[0]  # all k above the guard: more may hide beyond k
        if len(saturated):
            for offset, shard, vecs in store.iter_shards():
                if shard.rows == 0:
                    continue
                flat = faiss.IndexFlatIP(store.dim)
                flat.add(np.ascontiguousarray(vecs, dtype=np.float32))
                lims, dist, idx = flat.range_search(q[saturated], float(guard))
                for j, qi in enumerate(saturated.tolist()):
                    for s, r in zip(
                        dist[lims[j] : lims[j + 1]].tolist(), idx[lims[j] : lims[j + 1]].tolist(), strict=True
                    ):
                        _note_leak(leaks, int(r) + offset, min(float(s), 1.0), qi % nq)
    return best_d[:nq], best_i[:nq], leaks


def _note_leak(leaks: dict[int, tuple[float, int]], row: int, score: float, qi: int) -> None:
    if row not in leaks or score > leaks[row][0]:
        leaks[row] = (score, qi)


def assign_capped(scores: np.ndarray, rows: np.ndarray, keep: np.ndarray, top_k: int, cap: int | None) -> np.ndarray:
    """Which kept pairs survive: best score first, at most ``top_k`` rows per question, ``cap`` questions per row.

    Ties go to the lower question index, then the earlier column (deterministic)."""
    out = np.zeros_like(keep)
    qs, cols = np.nonzero(keep)
    order = np.lexsort((cols, qs, -scores[qs, cols]))
    per_q = np.zeros(len(scores), dtype=np.int64)
    per_row: dict[int, int] = defaultdict(int)
    for j in order.tolist():
        qi, c = int(qs[j]), int(cols[j])
        r = int(rows[qi, c])
        if per_q[qi] >= top_k or (cap is not None and per_row[r] >= cap):
            continue
        per_q[qi] += 1
        per_row[r] += 1
        out[qi, c] = True
    return out


@dataclass
class RecalledRow:
    id: str
    score: float  # best score over the questions that recalled it
    questions: list[str]  # question ids, best first


@dataclass
class LeakedRow:
    id: str
    score: float
    question: str


@dataclass
class RecallResult:
    recalled: list[RecalledRow]  # best score first
    leaked: list[LeakedRow]
    per_question: dict[str, int]  # question id -> rows kept
    subject_stats: list[dict[str, Any]]
    topk_scores: np.ndarray  # every valid top-k score (for the histogram)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def recalled_ids(self) -> list[str]:
        return [r.id for r in self.recalled]

    @property
    def leaked_ids(self) -> set[str]:
        return {r.id for r in self.leaked}


def _ids_of(store: VectorStore, rows: Sequence[int]) -> dict[int, str]:
    """Row ids of some global row indices, reading only the ids files of the shards they fall in."""
    wanted = sorted(set(rows))
    out: dict[int, str] = {}
    offset, j = 0, 0
    for shard in store.manifest.shards:
        end = offset + shard.rows
        if j < len(wanted) and wanted[j] < end:
            ids = store.ids(shard)
            while j < len(wanted) and wanted[j] < end:
                out[wanted[j]] = ids[wanted[j] - offset]
                j += 1
        offset = end
    return out


def recall(
    query_vectors: np.ndarray,
    question_ids: Sequence[str],
    subjects: Sequence[str],
    store: VectorStore,
    config: RecallConfig,
    guard_vectors: Sequence[np.ndarray] = (),
) -> RecallResult:
    """Search, apply threshold, leakage guard (over every view) and the per-row cap; union + dedup; statistics."""
    if not (len(query_vectors) == len(question_ids) == len(subjects)):
        raise MedtuneError("query vectors, question ids and subjects differ in length")
    scores, rows, leaks = search_store(query_vectors, store, config, guard_vectors, k=config.search_k)
    valid = rows >= 0
    keep = valid & (scores >= config.similarity_threshold)
    if leaks:
        keep &= ~np.isin(rows, np.fromiter(leaks, dtype=np.int64))
    keep = assign_capped(scores, rows, keep, config.top_k, config.max_questions_per_row)
    names = _ids_of(store, [*rows[keep].tolist(), *leaks])
    by_row: dict[int, list[tuple[float, str]]] = defaultdict(list)
    per_question: dict[str, int] = {}
    for qi, qid in enumerate(question_ids):
        kept = np.nonzero(keep[qi])[0]
        per_question[qid] = len(kept)
        for c in kept.tolist():
            by_row[int(rows[qi, c])].append((float(scores[qi, c]), qid))
    recalled = []
    for r, hits in by_row.items():
        hits.sort(key=lambda h: (-h[0], h[1]))
        recalled.append(RecalledRow(names[r], hits[0][0], [q for _, q in hits]))
    recalled.sort(key=lambda x: (-x.score, x.id))
    leaked = sorted(
        (LeakedRow(names[r], s, question_ids[qi]) for r, (s, qi) in leaks.items()), key=lambda x: (-x.score, x.id)
    )
    stats = _subject_stats(scores, rows, keep, question_ids, subjects, leaks, config)
    top_scores = scores[:, : config.top_k]
    return RecallResult(
        recalled,
        leaked,
        per_question,
        stats,
        top_scores[rows[:, : config.top_k] >= 0].astype(np.float32),
        asdict(config),
    )


def _subject_stats(
    scores: np.ndarray,
    rows: np.ndarray,
    keep: np.ndarray,
    question_ids: Sequence[str],
    subjects: Sequence[str],
    leaks: dict[int, tuple[float, int]],
    config: RecallConfig,
) -> list[dict[str, Any]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for qi, s in enumerate(subjects):
        groups[s].append(qi)
    leak_q = defaultdict(int)
    for _, qi in leaks.values():
        leak_q[subjects[qi]] += 1
    out = []
    for subject in [*sorted(groups), "ALL"]:
        idx = np.array(groups[subject] if subject != "ALL" else range(len(subjects)), dtype=np.int64)
        k = keep[idx]
        top1 = scores[idx, 0]
        top1 = top1[np.isfinite(top1)]
        out.append(
            {
                "subject": subject,
                "questions": len(idx),
                "questions_with_hits": int(k.any(axis=1).sum()),
                "coverage": round(float(k.any(axis=1).mean()), 4) if len(idx) else 0.0,
                "recalled_pairs": int(k.sum()),
                "unique_rows": len(set(rows[idx][k].tolist())),
                "mean_top1": round(float(top1.mean()), 4) if len(top1) else None,
                "mean_kept_score": round(float(scores[idx][k].mean()), 4) if k.any() else None,
                "leaked_rows": int(sum(leak_q.values())) if subject == "ALL" else int(leak_q.get(subject, 0)),
            }
        )
    return out


def most_recalled(result: RecallResult, n: int = 10) -> dict[str, Any]:
    """The ``n`` rows recalled for the most questions and their share of all (question, row) pairs."""
    pairs = sum(len(r.questions) for r in result.recalled)
    top = sorted(result.recalled, key=lambda r: (-len(r.questions), r.id))[:n]
    rows = [
        {
            "id": r.id,
            "questions": len(r.questions),
            "share": round(len(r.questions) / pairs, 4),
            "best": round(r.score, 4),
        }
        for r in top
    ]
    covered = sum(len(r.questions) for r in top)
    return {
        "pairs": pairs,
        "rows": len(result.recalled),
        "top": rows,
        "top_share": round(covered / pairs, 4) if pairs else 0.0,
    }


def recall_report(result: RecallResult, texts: dict[str, str] | None = None, n: int = 10) -> tuple[str, dict[str, Any]]:
    """Markdown and JSON of what the recall found: coverage per subject, the most-recalled rows and their share.

    A row recalled for many questions is usually generic rather than about any one of them; a high top-``n`` share
    says the recall is dominated by a few rows (lower ``max_questions_per_row`` or raise the threshold)."""
    top = most_recalled(result, n)
    lines = ["## Recall report", "", "### Coverage per subject", ""]
    cols = ["subject", "questions", "questions_with_hits", "coverage", "recalled_pairs", "unique_rows", "leaked_rows"]
    lines.append(stats_markdown([{c: r[c] for c in cols} for r in result.subject_stats]))
    lines += [
        f"### The {len(top['top'])} most-recalled rows: {top['top_share']:.1%} of {top['pairs']} pairs "
        f"({top['rows']} rows recalled)",
        "",
        "| row | questions | share of pairs | best score | text |",
        "|---|---|---|---|---|",
    ]
    for r in top["top"]:
        text = (texts or {}).get(r["id"], "").replace("\n", " ").replace("|", "/")[:60]
        lines.append(f"| {r['id']} | {r['questions']} | {r['share']:.1%} | {r['best']:.3f} | {text} |")
    return "\n".join(lines) + "\n", {"subjects": result.subject_stats, "most_recalled": top}


def stats_markdown(stats: list[dict[str, Any]]) -> str:
    cols = list(stats[0]) if stats else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt_number(r[c]) for c in cols) + " |" for r in stats]
    return "\n".join(lines) + "\n"


def fmt_number(value: Any, digits: int = 4) -> str:
    """A table cell: floats rounded to ``digits`` significant digits, None empty, anything else as is."""
    if value is None:
        return ""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Save a matplotlib figure atomically, without a timestamp (same data, same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())
    return Path(path)


def score_histogram(result: RecallResult, path: str | os.PathLike[str], *, bins: int = 50) -> Path:
    """A PNG histogram of every question's top-k scores, with the threshold and the leakage guard marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    scores = result.topk_scores[np.isfinite(result.topk_scores)]
    ax.hist(scores, bins=bins, color="#4c72b0")
    thr, guard = result.config.get("similarity_threshold"), result.config.get("max_similarity")
    if thr is not None:
        ax.axvline(thr, color="#55a868", linestyle="--", label=f"similarity_threshold {thr}")
    if guard is not None:
        ax.axvline(guard, color="#c44e52", linestyle="--", label=f"max_similarity {guard}")
    ax.set_xlabel("cosine similarity (top-k per question)")
    ax.set_ylabel("pairs")
    ax.set_title(f"Recall scores: {len(scores)} pairs, {len(result.recalled)} rows kept, {len(result.leaked)} leaked")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return save_png(fig, path)


def save_recall(result: RecallResult, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """``recalled.jsonl``, ``leaked.jsonl`` and ``recall_stats.json`` under ``out_dir`` (atomic)."""
    out = Path(out_dir)
    paths = {"recalled": out / "recalled.jsonl", "leaked": out / "leaked.jsonl", "stats": out / "recall_stats.json"}
    with atomic_write(paths["recalled"]) as fh:
        for r in result.recalled:
            fh.write(
                json.dumps({"id": r.id, "score": round(r.score, 6), "questions": r.questions}, ensure_ascii=False)
                + "\n"
            )
    with atomic_write(paths["leaked"]) as fh:
        for r in result.leaked:
            fh.write(
                json.dumps({"id": r.id, "score": round(r.score, 6), "question": r.question}, ensure_ascii=False) + "\n"
            )
    with atomic_write(paths["stats"]) as fh:
        payload = {"config": result.config, "subjects": result.subject_stats, "per_question": result.per_question}
        fh.write(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
    return paths


def load_recall(out_dir: str | os.PathLike[str]) -> tuple[list[RecalledRow], list[LeakedRow]]:
    out = Path(out_dir)
    with open(out / "recalled.jsonl", encoding="utf-8") as fh:
        recalled = [RecalledRow(**json.loads(line)) for line in fh]
    with open(out / "leaked.jsonl", encoding="utf-8") as fh:
        leaked = [LeakedRow(**json.loads(line)) for line in fh]
    return recalled, leaked
