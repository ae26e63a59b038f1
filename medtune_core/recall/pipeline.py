"""The whole eval-driven recall in one call (the flow runs the same steps as separate cached tasks).

``benchmark → embed questions → split pool → embed shards → recall (threshold, leakage guard) → histogram →
decontaminate → mix + control → write``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtune_core.dataio import atomic_write, atomic_write_text
from medtune_core.recall.benchmarks import Benchmark, EvalTextMode, load_benchmark
from medtune_core.recall.decontam import NgramIndex
from medtune_core.recall.embedding import EmbeddingBackend, EmbeddingConfig, make_backend
from medtune_core.recall.mixing import MixConfig, MixOutcome, build_training_sets
from medtune_core.recall.pool import TextMode, split_pool
from medtune_core.recall.search import RecallConfig, RecallResult, recall, save_recall, score_histogram, stats_markdown
from medtune_core.recall.store import VectorStore, build_store, write_shard


@dataclass
class RecallPipelineConfig:
    benchmark: Sequence[str | os.PathLike[str]]
    pool: Sequence[str | os.PathLike[str]]
    out_dir: str | os.PathLike[str]
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    recall: RecallConfig = field(default_factory=RecallConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    decontam_n: int = 13
    eval_text: EvalTextMode = EvalTextMode.QUESTION
    pool_text: TextMode = TextMode.FIRST_USER
    shard_size: int = 50_000
    subjects: Sequence[str] | None = None
    show_progress: bool = False


@dataclass
class RecallPipelineResult:
    benchmark: Benchmark
    recall: RecallResult
    mix: MixOutcome
    paths: dict[str, str]


def embed_benchmark(
    benchmark: Benchmark,
    backend: EmbeddingBackend,
    out_dir: str | os.PathLike[str],
    mode: EvalTextMode | str = EvalTextMode.QUESTION,
) -> Path:
    """Embed the questions into ``<out_dir>/eval-00000.npy`` (+ ids): a one-shard store of its own."""
    vectors = backend.embed(benchmark.texts(mode))
    write_shard(out_dir, "eval-00000", vectors, benchmark.ids)
    return Path(out_dir) / "eval-00000.npy"


def load_vectors(npy: str | os.PathLike[str]) -> np.ndarray:
    return np.asarray(np.load(npy, mmap_mode="r", allow_pickle=False), dtype=np.float32)


def run_recall_pipeline(config: RecallPipelineConfig, backend: EmbeddingBackend | None = None) -> RecallPipelineResult:
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backend = backend or make_backend(config.embedding)
    bench = load_benchmark(config.benchmark, subjects=config.subjects)
    eval_npy = embed_benchmark(bench, backend, out / "eval_vectors", config.eval_text)
    plan = split_pool(config.pool, out / "pool_texts", text_mode=config.pool_text, shard_size=config.shard_size)
    build_store(plan, out / "pool_texts", backend, out / "pool_vectors", show_progress=config.show_progress)
    store = VectorStore(out / "pool_vectors")
    result = recall(load_vectors(eval_npy), bench.ids, bench.subjects, store, config.recall)
    paths = {k: str(v) for k, v in save_recall(result, out).items()}
    paths["histogram"] = str(score_histogram(result, out / "recall_scores.png"))
    atomic_write_text(out / "recall_stats.md", stats_markdown(result.subject_stats))
    index = NgramIndex(bench.questions, config.decontam_n)
    mix = build_training_sets(
        config.pool, store.all_ids(), result.recalled, result.leaked_ids, index, out, config.mix, sources=plan.sources
    )
    paths.update(mix.paths)
    summary: dict[str, Any] = {
        "benchmark": {"questions": len(bench), "subjects": bench.subject_counts(), "sources": bench.sources},
        "pool_rows": plan.rows,
        "backend": backend.fingerprint(),
        "recall": {"config": asdict(config.recall), "recalled": len(result.recalled), "leaked": len(result.leaked)},
        "mix": mix.summary(),
    }
    with atomic_write(out / "summary.json") as fh:
        fh.write(json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    paths["summary"] = str(out / "summary.json")
    return RecallPipelineResult(bench, result, mix, paths)
