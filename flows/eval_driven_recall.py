"""Flow ``eval-driven-recall``: embed a benchmark and a training pool, recall the nearest rows, guard against
leakage, decontaminate, mix in random rows, write the training set and a same-size random control set.

DAG: split pool into text shards (an empty pool stops here) → pool statistics (ngram-hash: n-gram IDF) → embed eval
set in the recall view and the guard views, refusing a backend that cannot read it ([UNK] share) → embed each shard
(one cached task per shard: a killed run re-embeds nothing it finished) → recall (threshold, leakage guard over every
view, per-row cap, union + dedup) → stats table, recall report and score histogram artifacts → decontaminate (long
overlaps, near copies of questions) + mix + write train/control → [train and evaluate, optional: SFT the
base model on the recalled set and on the control with identical settings (the cached ``train-stage`` task, here or on
the CUDA pool) → evaluate base, control and recalled (cached per model) → comparison report, table and bar chart].
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from pydantic import Field, model_validator

import medtune_core
from medtune_core.dataio import Manifest
from medtune_core.errors import MedtuneError
from medtune_core.params import ExistingPath, HttpUrl, OutputDir, StrictParams
from medtune_core.recall import (
    BACKENDS,
    MAX_UNK_SHARE,
    EmbeddingConfig,
    EvalTextMode,
    MixConfig,
    RecallConfig,
    TextMode,
    backend_class,
    default_recall_config,
)
from medtune_core.settings import get_settings
from medtune_core.training import stage_config
from tasks.artifacts import publish_image, publish_markdown, publish_table
from tasks.base import call_fresh, map_fresh
from tasks.recall import (
    decontaminate_and_mix,
    embed_eval_set,
    embed_pool_shard,
    fit_pool_statistics,
    recall_task,
    split_pool_task,
)
from tasks.recall_eval import TrainEvalSettings, compare_models_task, evaluate_model_task
from tasks.training import resolve_base, train_stage_task, with_input_files

SAMPLES = Path(medtune_core.__file__).parent / "samples"
#: The backend choices: every registered embedding backend (a new one registers itself, the flow offers it).
BackendName = Literal[tuple(sorted(BACKENDS))]  # type: ignore[valid-type]


class EvalDrivenRecallParams(StrictParams):
    """Recall training rows like the benchmark's questions from a pool, with leakage guards and a random control."""

    output_dir: OutputDir = Field(Path("out/eval-driven-recall"), description="Where vectors, sets and reports go.")
    benchmark_files: list[ExistingPath] = Field(
        default_factory=lambda: [SAMPLES / "benchmark"],
        description="C-Eval/CMMLU CSV, C-Eval JSONL or MedQA JSONL files or folders. Default: the sample benchmark.",
    )
    subjects: list[str] = Field(default_factory=list, description="Keep only these subjects (empty: all).")
    pool_files: list[ExistingPath] = Field(
        default_factory=lambda: [SAMPLES / "pool"],
        description="Training pool files or folders in any chat/QA/preference/MCQ format. Default: the sample pool.",
    )
    backend: BackendName = Field(
        "ngram-hash",
        description="; ".join(f"{name}: {cls.description}" for name, cls in sorted(BACKENDS.items())),
    )
    model: str | None = Field(
        None,
        description="sentence-transformers: embedded:minilm-l6 (default, English only), a folder or cached hub id "
        "(e.g. paraphrase-multilingual-MiniLM-L12-v2 for Chinese); openai-api: the model name (embedding-3, ...).",
    )
    base_url: HttpUrl | None = Field(None, description="openai-api: the endpoint (default OPENAI_BASE_URL).")
    batch_size: int = Field(64, ge=1, le=4096, description="Texts per model batch / API request.")
    device: str | None = Field(None, description="sentence-transformers device (cpu, cuda).")
    eval_text: EvalTextMode = Field(EvalTextMode.QUESTION, description="What of a question is embedded.")
    pool_text: TextMode = Field(TextMode.FIRST_USER, description="What of a pool row is embedded.")
    shard_size: int = Field(50_000, ge=100, description="Pool rows per embedding shard (the unit of caching).")
    parallel_shards: int = Field(
        1,
        ge=1,
        le=64,
        description="Shards embedded at once: >1 pays off for an embeddings API (network-bound) or a Dask/Ray task "
        "runner; a local model on CPU already uses every core for one shard.",
    )
    top_k: int = Field(50, ge=1, le=1000, description="Rows recalled per question (usual range 30-100).")
    similarity_threshold: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Minimum cosine similarity. Empty: the backend's default (0.75 for model backends, 0.3 for "
        "ngram-hash, whose character n-gram cosines run lower).",
    )
    max_similarity: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Leakage guard: drop any pool row more similar than this to any view of any test item (question, "
        "question + options, question + answer). Empty: the backend's calibrated default (0.95 for model backends, "
        "0.85 for ngram-hash); 1.0 turns the guard off.",
    )
    max_questions_per_row: int | None = Field(
        10, ge=1, description="A pool row serves at most this many questions (its places go to their next rows)."
    )
    max_unk_share: float = Field(
        MAX_UNK_SHARE,
        ge=0.0,
        le=1.0,
        description="Refuse a backend whose tokenizer maps more than this share of the benchmark's tokens to [UNK] "
        "(an English model on Chinese); 1.0 runs it anyway.",
    )
    idf: bool = Field(True, description="ngram-hash: weight n-grams by the pool's IDF (rare n-grams decide).")
    index: Literal["flat", "ivf", "hnsw"] = Field("flat", description="flat: exact; ivf/hnsw: approximate, huge pools.")
    decontam_n: int = Field(13, ge=4, le=200, description="Drop rows sharing this many characters with the eval set.")
    mix_ratio: float = Field(0.25, ge=0.0, lt=1.0, description="Share of random non-recalled rows in the training set.")
    output_format: Literal["sharegpt", "messages"] = Field("sharegpt", description="Training file format.")
    control: bool = Field(True, description="Also write a random control set of the same size.")
    seed: int = Field(0, description="Seed of the random mix, the control and the shuffles.")
    train_and_evaluate: bool = Field(
        False,
        description="SFT the base model on the recalled set and on the random control (identical settings), "
        "evaluate base, control and recalled on the benchmark and publish the comparison.",
    )
    train_eval: TrainEvalSettings = Field(
        default_factory=TrainEvalSettings, description="Settings of the train-and-evaluate stage."
    )

    @model_validator(mode="after")
    def _check(self) -> EvalDrivenRecallParams:
        if self.guard < self.threshold:
            raise ValueError(f"max_similarity {self.guard} is below similarity_threshold {self.threshold}")
        if self.train_and_evaluate and not self.control:
            raise ValueError("train_and_evaluate compares against the random control set: control must be true")
        return self

    @property
    def threshold(self) -> float:
        if self.similarity_threshold is not None:
            return self.similarity_threshold
        return backend_class(self.backend).default_threshold

    @property
    def guard(self) -> float:
        if self.max_similarity is not None:
            return self.max_similarity
        return backend_class(self.backend).default_guard

    def embedding(self) -> EmbeddingConfig:
        options: dict[str, Any] = {}
        if self.backend == "openai-api":
            if self.base_url:
                options["base_url"] = self.base_url
            # per-text vectors: a changed shard or a re-split pool never pays twice for a text it already sent
            options["cache_path"] = str(get_settings().cache_dir / "embeddings.sqlite")
        return EmbeddingConfig(self.backend, self.model, self.batch_size, self.device, options)

    def recall_config(self) -> RecallConfig:
        return default_recall_config(
            self.backend,
            top_k=self.top_k,
            similarity_threshold=self.similarity_threshold,
            max_similarity=self.max_similarity,
            index=self.index,
            max_questions_per_row=self.max_questions_per_row,
        )

    def mix_config(self) -> MixConfig:
        return MixConfig(self.mix_ratio, self.seed, self.output_format, self.control)


def _sft_config(settings: TrainEvalSettings, base: Path, train: Manifest, run_dir: Path, label: str) -> dict[str, Any]:
    """One set's SFT config (as the ``train-stage`` task takes it); only the training file differs between sets.

    The output folder carries a short hash of the settings and the file's contents: a stage's folder keeps its
    merged model, so a run with other settings must not train into (and read back) an older run's folder. The
    training file's contents enter the task's cache key (:func:`tasks.training.with_input_files`).
    """
    values = {**settings.sft_values(), "model": str(base), "train_files": [train.path]}
    key = json.dumps({**values, "sha256": train.sha256}, sort_keys=True, default=str)
    tag = hashlib.sha256(key.encode()).hexdigest()[:10]
    cfg = stage_config("sft", **values, output_dir=run_dir / f"{label}-{tag}")
    return with_input_files(cfg.model_dump(mode="json"))


def train_and_evaluate(params: EvalDrivenRecallParams, train: Manifest, control: Manifest) -> dict[str, str]:
    """The last stage: SFT one base model on ``train`` and on ``control`` with identical settings, evaluate
    base / control / recalled on the benchmark, publish the comparison (markdown, table, bar chart)."""
    settings = params.train_eval
    run_dir = params.output_dir / "train_eval"
    for name, m in (("training set", train), ("control set", control)):
        if m.rows == 0:
            raise MedtuneError(f"train_and_evaluate: the {name} {m.path} is empty; lower similarity_threshold")
    base = resolve_base(settings.base_model)
    models: dict[str, Path] = {"base": base}
    training = []
    for label, data in (("control", control), ("recalled", train)):
        config = _sft_config(settings, base, data, run_dir, label)
        result = train_stage_task("sft", config, base, True, settings.cuda_deployment)
        models[label] = Path(result["merged_dir"])
        m = result.get("metrics", {})
        training.append(
            {
                "set": label,
                "rows": data.rows,
                "steps": m.get("steps"),
                "loss_first": m.get("loss_first"),
                "loss_last": m.get("loss_last"),
                "model": result["merged_dir"],
            }
        )
    options = settings.eval_options()
    results = {
        label: call_fresh(
            evaluate_model_task,
            model,
            label,
            params.benchmark_files,
            params.subjects,
            options,
            str(run_dir / "eval" / f"{label}.json"),
        )
        for label, model in models.items()
    }
    report = compare_models_task(results, training, str(run_dir))
    return {
        **{f"model_{label}": str(path) for label, path in models.items() if label != "base"},
        **{f"eval_{label}": m.path for label, m in results.items()},
        **report,
    }


@flow(name="eval-driven-recall")  # no print capture: the training libraries print bytecode dumps
def eval_driven_recall(params: EvalDrivenRecallParams) -> dict[str, str]:
    """Recall, guard, decontaminate, mix; returns the output paths (train, control, reports)."""
    out = params.output_dir
    texts = call_fresh(split_pool_task, params.pool_files, params.pool_text, params.shard_size, str(out / "pool_texts"))
    embedding = params.embedding()
    if params.idf:
        stats = call_fresh(fit_pool_statistics, texts, embedding, str(out / "pool_stats"))
        embedding = EmbeddingConfig(**{**asdict(embedding), "options": {**embedding.options, **stats}})
    eval_vectors = call_fresh(
        embed_eval_set,
        params.benchmark_files,
        params.subjects,
        params.eval_text,
        embedding,
        str(out / "eval_vectors"),
        params.max_unk_share,
    )
    shard_calls = [(Path(t.path), embedding, str(out / "pool_vectors")) for t in texts]
    shards = map_fresh(embed_pool_shard, shard_calls, params.parallel_shards)
    found = call_fresh(
        recall_task,
        eval_vectors,
        shards,
        str(out / "pool_vectors"),
        params.benchmark_files,
        params.subjects,
        params.recall_config(),
        str(out),
        [t.path for t in texts],
    )
    publish_table("recall-stats", found["stats"], "Recall per subject (threshold, leakage guard, per-row cap applied)")
    publish_markdown("recall-report", found["report"], "Coverage per subject and the most-recalled rows")
    publish_image(
        "recall-score-histogram",
        found["histogram"],
        "Recall score histogram",
        f"{found['recalled'].rows} rows recalled, {found['leaked'].rows} caught by the leakage guard "
        f"(max_similarity {params.guard}).",
    )
    sets = call_fresh(
        decontaminate_and_mix,
        params.pool_files,
        shards,
        str(out / "pool_vectors"),
        found["recalled"],
        params.benchmark_files,
        params.subjects,
        params.decontam_n,
        params.mix_config(),
        str(out),
        texts[0].extra.get("sources", []) if texts else [],
    )
    publish_table("recall-training-set", [sets["summary"]], "Training set: recalled + random, and the control")
    outputs = {
        "train": sets["train"].path,
        "recalled": found["recalled"].path,
        "leaked": found["leaked"].path,
        "histogram": found["histogram"],
        "stats": str(out / "recall_stats.json"),
        "report": str(out / "recall_report.md"),
        **{k: v for k, v in sets["paths"].items() if k not in ("train",)},
    }
    if params.train_and_evaluate:
        outputs.update(train_and_evaluate(params, sets["train"], sets["control"]))
    return outputs
