"""Eval-driven recall (seed 1): embed a benchmark and a training pool, recall the nearest rows, guard against
leakage, decontaminate, mix in random rows, write the training and control sets, evaluate and compare.

Plain Python (no Prefect): the ``eval-driven-recall`` flow runs these steps as cached tasks.
"""

from medtune_core.recall.benchmarks import Benchmark, EvalTextMode, contamination_texts, load_benchmark, question_text
from medtune_core.recall.decontam import Contamination, NgramIndex
from medtune_core.recall.embedding import (
    BACKENDS,
    EmbeddingBackend,
    EmbeddingConfig,
    NgramHashBackend,
    OpenAIEmbeddingsBackend,
    SentenceTransformersBackend,
    make_backend,
    register_backend,
)
from medtune_core.recall.mixing import MixConfig, MixOutcome, build_training_sets, random_count
from medtune_core.recall.pipeline import (
    RecallPipelineConfig,
    RecallPipelineResult,
    embed_benchmark,
    load_vectors,
    run_recall_pipeline,
)
from medtune_core.recall.pool import (
    PoolPlan,
    PoolRow,
    TextMode,
    iter_pool,
    record_text,
    row_id,
    select_rows,
    split_pool,
)
from medtune_core.recall.search import (
    RecallConfig,
    RecallResult,
    recall,
    save_recall,
    score_histogram,
    search_store,
    stats_markdown,
)
from medtune_core.recall.store import (
    StoreManifest,
    VectorStore,
    build_store,
    embed_text_shard,
    finalize_store,
    write_shard,
)

__all__ = [
    "BACKENDS",
    "Benchmark",
    "Contamination",
    "EmbeddingBackend",
    "EmbeddingConfig",
    "EvalTextMode",
    "MixConfig",
    "MixOutcome",
    "NgramHashBackend",
    "NgramIndex",
    "OpenAIEmbeddingsBackend",
    "PoolPlan",
    "PoolRow",
    "RecallConfig",
    "RecallPipelineConfig",
    "RecallPipelineResult",
    "RecallResult",
    "SentenceTransformersBackend",
    "StoreManifest",
    "TextMode",
    "VectorStore",
    "build_store",
    "build_training_sets",
    "contamination_texts",
    "embed_benchmark",
    "embed_text_shard",
    "finalize_store",
    "iter_pool",
    "load_benchmark",
    "load_vectors",
    "make_backend",
    "question_text",
    "random_count",
    "recall",
    "record_text",
    "register_backend",
    "row_id",
    "run_recall_pipeline",
    "save_recall",
    "score_histogram",
    "search_store",
    "select_rows",
    "split_pool",
    "stats_markdown",
    "write_shard",
]
