"""Eval-driven recall tasks: thin, cached wrappers over :mod:`medtune_core.recall`.

Caching follows file contents (``CONTENT_AWARE``): the eval set's embedding is keyed by the benchmark files and the
backend; each pool shard's embedding is its own task keyed by that shard's text file, so a killed run re-embeds
nothing it finished. Tasks pass paths and :class:`Manifest`s (which ``call_fresh`` checks against the files), never
vectors.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from medtune_core.dataio import Manifest, atomic_write_text
from medtune_core.hashing import file_sha256
from medtune_core.recall import (
    MAX_UNK_SHARE,
    Decontaminator,
    EmbeddingBackend,
    EmbeddingConfig,
    EvalTextMode,
    MixConfig,
    RecallConfig,
    TextMode,
    VectorStore,
    backend_class,
    build_training_sets,
    check_vocabulary,
    embed_benchmark,
    embed_text_shard,
    finalize_store,
    guard_view_paths,
    load_benchmark,
    load_vectors,
    make_backend,
    pool_texts,
    recall,
    recall_report,
    save_recall,
    score_histogram,
    split_pool,
    stats_markdown,
)
from medtune_core.recall.search import load_recall
from medtune_core.recall.store import ShardInfo
from tasks.base import medtune_task

_BACKENDS: dict[str, EmbeddingBackend] = {}


def backend_for(config: EmbeddingConfig) -> EmbeddingBackend:
    """One backend per configuration and process (a model loads once, not once per shard)."""
    key = json.dumps(asdict(config), sort_keys=True, default=str)
    if key not in _BACKENDS:
        _BACKENDS[key] = make_backend(config)
    return _BACKENDS[key]


def file_manifest(path: Path, fmt: str, kind: str, rows: int, **extra: Any) -> Manifest:
    """A manifest for a non-dataset output (vectors, recall lists), so cached results are checked against files."""
    manifest = Manifest(str(path), fmt, kind, rows, file_sha256(path), path.stat().st_size, extra=extra)
    manifest.save()
    return manifest


@medtune_task(name="recall-embed-eval-set", retry="network")
def embed_eval_set(
    benchmark_files: list[Path],
    subjects: list[str],
    eval_text: EvalTextMode,
    embedding: EmbeddingConfig,
    out_dir: str,
    max_unk_share: float = MAX_UNK_SHARE,
) -> Manifest:
    """Load the benchmark, refuse a backend that cannot read it, embed its questions (``eval-00000.npy`` + ids) and
    the guard views (``guard-<view>.npy``); cached by the files' contents.

    Output folders are passed as strings: a ``Path`` input is hashed by its contents, which the task itself changes.
    """
    bench = load_benchmark(benchmark_files, subjects=subjects or None)
    backend = backend_for(embedding)
    check_vocabulary(backend, bench.texts(eval_text), max_unk_share)
    npy = embed_benchmark(bench, backend, out_dir, eval_text)
    get_run_logger().info("embedded %d questions of %d subjects", len(bench), len(bench.subject_counts()))
    return file_manifest(
        npy,
        "npy-f16",
        "vectors",
        len(bench),
        subjects=bench.subject_counts(),
        backend=backend.fingerprint(),
        sources=bench.sources,
    )


@medtune_task(name="recall-pool-statistics")
def fit_pool_statistics(texts: list[Manifest], embedding: EmbeddingConfig, out_dir: str) -> dict[str, Any]:
    """What the backend learns from the pool before embedding (ngram-hash: n-gram IDF); options for its config."""
    options = backend_class(embedding.backend).fit_statistics(embedding, [Path(t.path) for t in texts], Path(out_dir))
    if options:
        get_run_logger().info("pool statistics for %s: %s", embedding.backend, sorted(options))
    return options


@medtune_task(name="recall-split-pool")
def split_pool_task(pool_files: list[Path], text_mode: TextMode, shard_size: int, out_dir: str) -> list[Manifest]:
    """Stream the pool once into text shards (bad rows rejected and counted); one manifest per shard.

    An empty pool fails here, first, with "the pool is empty" and before anything is embedded or written."""
    plan = split_pool(pool_files, out_dir, text_mode=text_mode, shard_size=shard_size)
    rejected = sum(s.get("rejected", 0) for s in plan.sources)
    get_run_logger().info("pool: %d rows in %d shards, %d rejected", plan.rows, len(plan.shards), rejected)
    return [
        file_manifest(Path(out_dir) / name, "recall-texts", "texts", rows, sources=plan.sources)
        for name, rows in zip(plan.shards, plan.shard_rows, strict=True)
    ]


@medtune_task(name="recall-embed-pool-shard", retry="network")
def embed_pool_shard(text_shard: Path, embedding: EmbeddingConfig, out_dir: str) -> Manifest:
    """Embed one text shard into float16 ``shard-NNNNN.npy`` + ids; its own cache entry."""
    info = embed_text_shard(text_shard, backend_for(embedding), out_dir)
    return file_manifest(
        info.vectors_path(Path(out_dir)), "npy-f16", "vectors", info.rows, dim=info.dim, name=info.name
    )


@medtune_task(name="recall-search")
def recall_task(
    eval_vectors: Manifest,
    shards: list[Manifest],
    store_dir: str,
    benchmark_files: list[Path],
    subjects: list[str],
    config: RecallConfig,
    out_dir: str,
    text_shards: list[str] | None = None,
) -> dict[str, Any]:
    """Write the store manifest, search, guard (every view), cap, dedup; ``recalled.jsonl``, ``leaked.jsonl``,
    stats, the recall report and the histogram."""
    out = Path(out_dir)
    infos = [ShardInfo(m.extra["name"], m.rows, m.extra["dim"], m.sha256) for m in shards]
    finalize_store(store_dir, infos, eval_vectors.extra.get("backend", {}))
    bench = load_benchmark(benchmark_files, subjects=subjects or None)
    guards = [load_vectors(p) for p in guard_view_paths(eval_vectors.path)]
    store = VectorStore(store_dir)
    result = recall(load_vectors(eval_vectors.path), bench.ids, bench.subjects, store, config, guards)
    paths = save_recall(result, out)
    histogram = score_histogram(result, out / "recall_scores.png")
    atomic_write_text(out / "recall_stats.md", stats_markdown(result.subject_stats))
    report, _ = recall_report(result, pool_texts(text_shards or []))
    atomic_write_text(out / "recall_report.md", report)
    get_run_logger().info("recalled %d rows, %d caught by the leakage guard", len(result.recalled), len(result.leaked))
    sources = eval_vectors.extra.get("sources", [])
    return {
        "recalled": file_manifest(paths["recalled"], "recall-rows", "recall", len(result.recalled), sources=sources),
        "leaked": file_manifest(paths["leaked"], "recall-rows", "recall", len(result.leaked), sources=sources),
        "histogram": str(histogram),
        "stats": result.subject_stats,
        "report": report,
    }


@medtune_task(name="recall-decontaminate-and-mix")
def decontaminate_and_mix(
    pool_files: list[Path],
    shards: list[Manifest],
    store_dir: str,
    recalled: Manifest,
    benchmark_files: list[Path],
    subjects: list[str],
    decontam_n: int,
    mix: MixConfig,
    out_dir: str,
    sources: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Drop rows that copy the eval set (``decontam_n`` shared characters, or a near copy of a question), mix in
    random rows, write train + control (their manifests list the pool's ``sources``)."""
    bench = load_benchmark(benchmark_files, subjects=subjects or None)
    rows, leaked = load_recall(Path(recalled.path).parent)
    ids = [i for m in shards for i in Path(m.path).with_suffix(".ids.txt").read_text(encoding="utf-8").splitlines()]
    outcome = build_training_sets(
        pool_files,
        ids,
        rows,
        {r.id for r in leaked},
        Decontaminator(bench.questions, decontam_n),
        out_dir,
        mix,
        sources=sources or [],
    )
    for warning in outcome.warnings:
        get_run_logger().warning(warning)
    return {"train": outcome.train, "control": outcome.control, "summary": outcome.summary(), "paths": outcome.paths}
