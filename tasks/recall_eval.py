"""The recall flow's last stage as tasks: evaluate a model on the benchmark, compare base / control / recalled models.

Training is not here: the flow calls :func:`tasks.training.train_stage_task` (cached, GPU-dispatchable) once for the
recalled set and once for the random control with identical settings. The work is the core's
(:mod:`medtune_core.recall.benchmark_eval`, :mod:`medtune_core.recall.report`); these tasks add caching (on the model
folder's contents, the benchmark files and the options), logging and artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from medtune_core.dataio import Manifest, atomic_write_text
from medtune_core.recall.benchmark_eval import EvalMethod, RecallEvalOptions, balanced_subset, evaluate_benchmark
from medtune_core.recall.evaluate import EvalResults, accuracy_chart
from medtune_core.recall.report import comparison_report, fmt_number
from tasks.artifacts import image_markdown, publish_markdown, publish_table
from tasks.base import medtune_task
from tasks.recall import file_manifest

__all__ = [
    "RecallEvalOptions",
    "TrainEvalSettings",
    "balanced_subset",
    "compare_models_task",
    "evaluate_benchmark",
    "evaluate_model_task",
]


class TrainEvalSettings(BaseModel):
    """The optional train-and-evaluate stage: one SFT recipe applied to the recalled and the control set."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(
        "embedded:smollm2-135m-instruct", description="Base model: embedded:NAME, a folder or a cached hub id."
    )
    max_steps: int = Field(30, ge=1, description="SFT optimizer steps (same for both sets).")
    learning_rate: float = Field(2e-4, gt=0, description="SFT learning rate (full 3B fine-tuning: 1e-5..2e-5).")
    lora_rank: int = Field(16, ge=1, le=1024, description="LoRA rank (alpha = 2 x rank; 64-128 for a 3B model).")
    batch_size: int = Field(
        1,
        ge=1,
        le=512,
        description="SFT per-device batch size (1 x grad_accum 4: the stage's peak memory on CPU stays under 4 GB; "
        "batch 4 peaked at 10 GB with SmolLM2's 49k-token vocabulary).",
    )
    grad_accum: int = Field(4, ge=1, le=512, description="Gradient accumulation steps (effective batch: batch x this).")
    max_length: int = Field(512, ge=16, description="SFT tokens per packed row.")
    method: EvalMethod = Field(
        "loglikelihood",
        description="Evaluation method: loglikelihood (letters, one pass), loglikelihood-text (option texts, "
        "length-normalised, for weak base models) or generation (chat models).",
    )
    max_eval_questions: int | None = Field(
        None, ge=1, description="Evaluate at most this many benchmark questions (balanced across subjects)."
    )
    eval_batch_size: int = Field(8, ge=1, le=512)
    max_new_tokens: int = Field(32, ge=1, le=4096, description="generation: tokens per answer.")
    device: str | None = Field(None, description="Evaluation device; empty: cuda when present.")
    cuda_deployment: str | None = Field(
        None, description="Train both sets on the CUDA pool through this deployment (e.g. train-stage/cuda)."
    )
    seed: int = Field(42, description="Training seed (the same for both sets).")

    def eval_options(self) -> RecallEvalOptions:
        return RecallEvalOptions(
            method=self.method,
            max_questions=self.max_eval_questions,
            batch_size=self.eval_batch_size,
            max_new_tokens=self.max_new_tokens,
            device=self.device,
        )

    def sft_values(self) -> dict[str, Any]:
        """The SFT stage settings both models share (``stage_config("sft", **values, model=..., ...)``)."""
        return {
            "max_steps": self.max_steps,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "max_length": self.max_length,
            "adapter": {"type": "lora", "r": self.lora_rank, "alpha": 2 * self.lora_rank},
            "seed": self.seed,
        }


# --------------------------------------------------------------------------------------------- tasks


@medtune_task(name="recall-evaluate-model", retry="gpu", tags=["evaluation"])
def evaluate_model_task(
    model: Path,
    label: str,
    benchmark_files: list[Path],
    subjects: list[str],
    options: RecallEvalOptions,
    out_path: str,
) -> Manifest:
    """Evaluate one model folder on the benchmark; ``out_path`` (results JSON). Cached on the folder's contents."""
    results = evaluate_benchmark(model, benchmark_files, subjects=subjects, options=options, name=label)
    path = results.save(out_path)
    log = get_run_logger()
    log.info("%s: accuracy %.1f%% on %d questions", label, 100 * results.accuracy, len(results.results))
    if results.degenerate():
        log.warning("%s: not informative: %s", label, results.degenerate())
    return file_manifest(
        path,
        "eval-results",
        "eval",
        len(results.results),
        accuracy=round(results.accuracy, 6),
        label=label,
        predictions=results.letter_distribution(),
        sources=[str(f) for f in benchmark_files],
    )


@medtune_task(name="recall-compare-models", cache=False)
def compare_models_task(results: dict[str, Manifest], training: list[dict[str, Any]], out_dir: str) -> dict[str, str]:
    """Write ``comparison.md`` / ``.json`` / ``.png`` for base, control and recalled; publish them as artifacts."""
    out = Path(out_dir)
    named = [(label, EvalResults.load(m.path)) for label, m in results.items()]
    pairs = [(a, "recalled") for a in ("control", "base") if a in results and "recalled" in results]
    chart = accuracy_chart(named, out / "comparison.png")
    markdown, payload = comparison_report(named, pairs, chart=chart.name)
    if training:
        markdown += (
            "\n### Training (identical SFT settings)\n\n| set | rows | steps | loss first | loss last | model |\n"
        )
        markdown += "|---|---|---|---|---|---|\n"
        for t in training:
            loss = f"{fmt_number(t['loss_first'])} | {fmt_number(t['loss_last'])}"
            markdown += f"| {t['set']} | {t['rows']} | {t['steps']} | {loss} | `{t['model']}` |\n"
        payload["training"] = training
    md = out / "comparison.md"
    atomic_write_text(md, markdown)
    js = out / "comparison.json"
    atomic_write_text(js, json.dumps(payload, ensure_ascii=False, indent=1, default=str) + "\n")
    shown = markdown.replace(f"![accuracy per subject]({chart.name})", image_markdown(chart, "accuracy per subject"))
    publish_markdown("recall-comparison", shown, "Base vs control vs recalled")
    publish_table(
        "recall-comparison-subjects",
        [
            {
                "subject": r["subject"],
                "n": r["n"],
                **{k: (v or {}).get("accuracy") for k, v in r["models"].items()},
                **{f"p {k}": (r[k] or {}).get("p_value") for k in payload["pairs"]},
            }
            for r in payload["subjects"]
        ],
        "Accuracy per subject and McNemar p-values",
    )
    return {"comparison": str(md), "comparison_json": str(js), "comparison_chart": str(chart)}
