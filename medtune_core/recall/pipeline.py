"""The whole eval-driven recall in one call (the flow runs the same steps as separate cached tasks).

``benchmark → split pool → corpus statistics → embed questions (recall view + guard views, [UNK] check) → embed
shards → recall (threshold, leakage guard over every view, per-row cap) → histogram, report → decontaminate (long
overlaps, near copies) → mix + control → write``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medtune_core.dataio import atomic_write, atomic_write_text
from medtune_core.errors import MedtuneError
from medtune_core.recall.benchmarks import GUARD_VIEWS, Benchmark, EvalTextMode, load_benchmark
from medtune_core.recall.decontam import Decontaminator
from medtune_core.recall.embedding import BACKENDS, EmbeddingBackend, EmbeddingConfig, backend_class, make_backend
from medtune_core.recall.mixing import MixConfig, MixOutcome, build_training_sets
from medtune_core.recall.pool import TextMode, read_text_shard, split_pool
from medtune_core.recall.search import (
    RecallConfig,
    RecallResult,
    recall,
    recall_report,
    save_recall,
    score_histogram,
    stats_markdown,
)
from medtune_core.recall.store import VectorStore, build_store, write_shard

#: Refuse a backend whose tokenizer cannot read more than this share of the benchmark's tokens.
MAX_UNK_SHARE = 0.2


@dataclass
class RecallPipelineConfig:
    benchmark: Sequence[str | os.PathLike[str]]
    pool: Sequence[str | os.PathLike[str]]
    out_dir: str | os.PathLike[str]
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    #: None: the backend's calibrated defaults (threshold and guard)
    recall: RecallConfig | None = None
    mix: MixConfig = field(default_factory=MixConfig)
    decontam_n: int = 13
    eval_text: EvalTextMode = EvalTextMode.QUESTION
    pool_text: TextMode = TextMode.FIRST_USER
    shard_size: int = 50_000
    subjects: Sequence[str] | None = None
    show_progress: bool = False
    max_unk_share: float = MAX_UNK_SHARE
    #: ngram-hash: weight n-grams by the pool's IDF (fitted before embedding)
    fit_statistics: bool = True


@dataclass
class RecallPipelineResult:
    benchmark: Benchmark
    recall: RecallResult
    mix: MixOutcome
    paths: dict[str, str]


def default_recall_config(backend: str, **values: Any) -> RecallConfig:
    """A recall config with the backend's calibrated threshold and guard where ``values`` leave them out (None)."""
    cls = backend_class(backend)
    if values.get("similarity_threshold") is None:
        values["similarity_threshold"] = cls.default_threshold
    if values.get("max_similarity") is None:
        values["max_similarity"] = cls.default_guard
    return RecallConfig(**values)


def check_vocabulary(backend: EmbeddingBackend, texts: Sequence[str], max_unk_share: float = MAX_UNK_SHARE) -> None:
    """Refuse a backend whose tokenizer maps more than ``max_unk_share`` of the texts' tokens to ``[UNK]``.

    Such vectors mostly encode "unknown": unrelated texts score near 1.0, so the recall is noise and the guard drops
    clean rows as leaks. The error names the share and the alternatives."""
    share = backend.unk_share(texts)
    if share is None or share <= max_unk_share:
        return
    others = ", ".join(n for n in sorted(BACKENDS) if n != backend.name)
    raise MedtuneError(
        f"embedding backend {backend.name} ({backend.fingerprint().get('model', '')}) cannot read the benchmark: "
        f"{share:.1%} of its tokens are [UNK] (limit {max_unk_share:.0%}). Use a model for the benchmark's language "
        f"(e.g. a multilingual sentence-transformers model) or another backend ({others}); "
        "max_unk_share=1.0 runs it anyway."
    )


def embed_benchmark(
    benchmark: Benchmark,
    backend: EmbeddingBackend,
    out_dir: str | os.PathLike[str],
    mode: EvalTextMode | str = EvalTextMode.QUESTION,
) -> Path:
    """Embed the questions into ``<out_dir>/eval-00000.npy`` (+ ids) and every guard view into ``guard-<view>.npy``.

    The recall searches with ``mode``; the leakage guard compares pool rows with all views."""
    vectors = backend.embed(benchmark.texts(mode))
    write_shard(out_dir, "eval-00000", vectors, benchmark.ids)
    for view in GUARD_VIEWS:
        same = EvalTextMode(mode) is view
        write_shard(
            out_dir, f"guard-{view.value}", vectors if same else backend.embed(benchmark.texts(view)), benchmark.ids
        )
    return Path(out_dir) / "eval-00000.npy"


def guard_view_paths(eval_npy: str | os.PathLike[str]) -> list[Path]:
    """The guard views written beside ``eval-00000.npy``."""
    return [Path(eval_npy).with_name(f"guard-{view.value}.npy") for view in GUARD_VIEWS]


def load_vectors(npy: str | os.PathLike[str]) -> np.ndarray:
    return np.asarray(np.load(npy, mmap_mode="r", allow_pickle=False), dtype=np.float32)


def pool_texts(text_shards: Sequence[str | os.PathLike[str]]) -> dict[str, str]:
    """Row id → embedded text of every text shard (for reports)."""
    out: dict[str, str] = {}
    for shard in text_shards:
        ids, texts = read_text_shard(shard)
        out.update(zip(ids, texts, strict=True))
    return out


def run_recall_pipeline(config: RecallPipelineConfig, backend: EmbeddingBackend | None = None) -> RecallPipelineResult:
    out = Path(config.out_dir)
    created = not out.exists()
    try:
        return _run(config, out, backend)
    except MedtuneError:
        if created:  # a refused run leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _run(config: RecallPipelineConfig, out: Path, backend: EmbeddingBackend | None) -> RecallPipelineResult:
    bench = load_benchmark(config.benchmark, subjects=config.subjects)
    plan = split_pool(config.pool, out / "pool_texts", text_mode=config.pool_text, shard_size=config.shard_size)
    shard_paths = [out / "pool_texts" / s for s in plan.shards]
    embedding = config.embedding
    if backend is None:
        if config.fit_statistics:
            stats = backend_class(embedding.backend).fit_statistics(embedding, shard_paths, out / "pool_stats")
            embedding = replace(embedding, options={**embedding.options, **stats})
        backend = make_backend(embedding)
    check_vocabulary(backend, bench.texts(config.eval_text), config.max_unk_share)
    rc = config.recall or default_recall_config(backend.name)
    eval_npy = embed_benchmark(bench, backend, out / "eval_vectors", config.eval_text)
    build_store(plan, out / "pool_texts", backend, out / "pool_vectors", show_progress=config.show_progress)
    store = VectorStore(out / "pool_vectors")
    guards = [load_vectors(p) for p in guard_view_paths(eval_npy)]
    result = recall(load_vectors(eval_npy), bench.ids, bench.subjects, store, rc, guards)
    paths = {k: str(v) for k, v in save_recall(result, out).items()}
    paths["histogram"] = str(score_histogram(result, out / "recall_scores.png"))
    atomic_write_text(out / "recall_stats.md", stats_markdown(result.subject_stats))
    report, report_json = recall_report(result, pool_texts(shard_paths))
    atomic_write_text(out / "recall_report.md", report)
    paths["report"] = str(out / "recall_report.md")
    index = Decontaminator(bench.questions, config.decontam_n)
    mix = build_training_sets(
        config.pool, store.all_ids(), result.recalled, result.leaked_ids, index, out, config.mix, sources=plan.sources
    )
    paths.update(mix.paths)
    summary: dict[str, Any] = {
        "benchmark": {"questions": len(bench), "subjects": bench.subject_counts(), "sources": bench.sources},
        "pool_rows": plan.rows,
        "backend": backend.fingerprint(),
        "recall": {
            "config": asdict(rc),
            "recalled": len(result.recalled),
            "leaked": len(result.leaked),
            "most_recalled": report_json["most_recalled"],
        },
        "mix": mix.summary(),
    }
    with atomic_write(out / "summary.json") as fh:
        fh.write(json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    paths["summary"] = str(out / "summary.json")
    return RecallPipelineResult(bench, result, mix, paths)
