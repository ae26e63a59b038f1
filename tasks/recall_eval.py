"""Seed 1's last stage as tasks: evaluate a model on the benchmark, compare base / control / recalled models.

Training is not here: the flow calls :func:`tasks.training.train_stage_task` (cached, GPU-dispatchable) once for the
recalled set and once for the random control with identical settings. This module evaluates each model with
:mod:`medtune_core.recall.evaluate` (cached on the model folder's contents, the benchmark files and the options) and
writes the comparison: a markdown table with per-subject accuracy and bootstrap 95% intervals for every model,
McNemar exact p-values of recalled vs control and recalled vs base, and a grouped bar chart.

:func:`evaluate_benchmark` and :func:`comparison_report` need no Prefect run, so ``medtune recall`` uses them too.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from medtune_core.dataio import Manifest, atomic_write_text
from medtune_core.errors import MedtuneError
from medtune_core.formats import MultipleChoice
from medtune_core.recall import load_benchmark
from medtune_core.recall.evaluate import (
    EvalResults,
    HFCausalLM,
    accuracy_by_subject,
    accuracy_chart,
    compare_results,
    comparison_markdown,
    evaluate_generation,
    evaluate_loglikelihood,
)
from tasks.artifacts import publish_markdown, publish_table
from tasks.base import medtune_task
from tasks.recall import file_manifest

EvalMethod = Literal["loglikelihood", "generation"]


class RecallEvalOptions(BaseModel):
    """How a model is evaluated on the benchmark (part of the evaluation task's cache key)."""

    model_config = ConfigDict(extra="forbid")

    method: EvalMethod = Field(
        "loglikelihood",
        description="loglikelihood: option letters scored by the LM (base models); generation: ask through the chat "
        "template and parse the answer letter (chat models).",
    )
    max_questions: int | None = Field(
        None, ge=1, description="Evaluate at most this many questions (balanced across subjects); empty: all."
    )
    batch_size: int = Field(8, ge=1, le=512)
    max_new_tokens: int = Field(32, ge=1, le=4096, description="generation: tokens generated per answer.")
    device: str | None = Field(None, description="cpu or cuda[:N]; empty: cuda when present.")


class TrainEvalSettings(BaseModel):
    """The optional train-and-evaluate stage: one SFT recipe applied to the recalled and the control set."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(
        "embedded:smollm2-135m-instruct", description="Base model: embedded:NAME, a folder or a cached hub id."
    )
    max_steps: int = Field(30, ge=1, description="SFT optimizer steps (same for both sets).")
    learning_rate: float = Field(2e-4, gt=0, description="SFT learning rate (seed 1: 1e-5..2e-5 for full 3B runs).")
    lora_rank: int = Field(16, ge=1, le=1024, description="LoRA rank (alpha = 2 x rank; seed 1: 64-128 on 3B).")
    batch_size: int = Field(4, ge=1, le=512, description="SFT per-device batch size.")
    max_length: int = Field(512, ge=16, description="SFT tokens per packed row.")
    method: EvalMethod = Field("loglikelihood", description="Evaluation method: loglikelihood or generation.")
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
            "max_length": self.max_length,
            "adapter": {"type": "lora", "r": self.lora_rank, "alpha": 2 * self.lora_rank},
            "seed": self.seed,
        }


# --------------------------------------------------------------------------------------------- evaluation


def balanced_subset(questions: Sequence[MultipleChoice], limit: int | None) -> list[MultipleChoice]:
    """At most ``limit`` questions, taken round-robin across subjects in file order (deterministic)."""
    if limit is None or limit >= len(questions):
        return list(questions)
    groups: dict[str, list[MultipleChoice]] = defaultdict(list)
    for q in questions:
        groups[q.subject or "unknown"].append(q)
    chosen: set[int] = set()
    depth = 0
    while len(chosen) < limit:
        for group in groups.values():
            if depth < len(group) and len(chosen) < limit:
                chosen.add(id(group[depth]))
        depth += 1
    return [q for q in questions if id(q) in chosen]


def _device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_benchmark(
    model: str | os.PathLike[str],
    benchmark_files: Sequence[str | os.PathLike[str]],
    *,
    subjects: Sequence[str] | None = None,
    options: RecallEvalOptions | None = None,
    name: str | None = None,
) -> EvalResults:
    """Evaluate a model reference (``tiny``, ``embedded:NAME``, a merged model folder, a cached hub id)."""
    from medtune_core.training import resolve_model_ref

    opts = options or RecallEvalOptions()
    path = resolve_model_ref(model)
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise MedtuneError(f"{path}: a LoRA adapter, not a full model; evaluate its merged folder (<stage>/merged)")
    bench = load_benchmark(benchmark_files, subjects=list(subjects) if subjects else None)
    if not len(bench):
        raise MedtuneError(f"no questions in {[str(f) for f in benchmark_files]} (subjects {list(subjects or [])})")
    questions = balanced_subset(bench.questions, opts.max_questions)
    lm = HFCausalLM(path, batch_size=opts.batch_size, device=_device(opts.device), max_new_tokens=opts.max_new_tokens)
    label = name or str(model)
    if opts.method == "generation":
        results = evaluate_generation(questions, lm, model_name=label)
    else:
        results = evaluate_loglikelihood(questions, lm, model_name=label)
    results.meta.update(
        model_path=str(path),
        benchmark=[str(f) for f in benchmark_files],
        questions=len(questions),
        of=len(bench),
        options=opts.model_dump(mode="json"),
    )
    return results


# --------------------------------------------------------------------------------------------- comparison


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "–"
    return f"{row['accuracy']:.1%} [{row['ci95_low']:.1%}, {row['ci95_high']:.1%}]"


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def comparison_report(
    named: Sequence[tuple[str, EvalResults]],
    pairs: Sequence[tuple[str, str]],
    *,
    chart: str | None = None,
    title: str = "Eval-driven recall: base vs random control vs recalled",
) -> tuple[str, dict[str, Any]]:
    """A markdown report and its JSON: per-subject accuracy with 95% bootstrap CIs for every model, and for each
    ``(a, b)`` pair the McNemar exact p-value of ``b`` vs ``a`` (paired by question id), overall and per subject."""
    by_name = dict(named)
    tables = {name: {r["subject"]: r for r in accuracy_by_subject(res)} for name, res in named}
    comps = {(a, b): compare_results(by_name[a], by_name[b], name_a=a, name_b=b) for a, b in pairs}
    subjects = [*sorted({s for t in tables.values() for s in t if s != "ALL"}), "ALL"]
    method = {res.method for _, res in named}
    head = [f"## {title}", ""]
    head.append(
        f"{len(next(iter(named))[1].results)} questions, method {', '.join(sorted(method))}; accuracy with "
        "percentile-bootstrap 95% intervals; Δ and McNemar exact p-value of each pair (paired by question)."
    )
    head.append("")
    cols = [n for n, _ in named] + [f"{b} − {a} (p)" for a, b in pairs]
    lines = [*head, "| subject | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    rows_json = []
    for s in subjects:
        n = max((t.get(s, {}).get("n", 0) for t in tables.values()), default=0)
        cells = [_cell(tables[name].get(s)) for name, _ in named]
        entry: dict[str, Any] = {"subject": s, "n": n, "models": {name: tables[name].get(s) for name, _ in named}}
        for a, b in pairs:
            row = next((r for r in comps[(a, b)].subjects if r["subject"] == s), None)
            cells.append("–" if row is None else f"{row['delta']:+.1%} (p={row['p_value']:.4g})")
            entry[f"{b}_vs_{a}"] = row
        lines.append(f"| {s} | {n} | " + " | ".join(cells) + " |")
        rows_json.append(entry)
    lines.append("")
    for a, b in pairs:
        lines += [f"### {b} vs {a}", "", comparison_markdown(comps[(a, b)])]
    if chart:
        lines += [f"![accuracy per subject]({chart})", ""]
    payload = {
        "models": {name: {"model": res.model, "method": res.method, "accuracy": res.accuracy} for name, res in named},
        "subjects": rows_json,
        "pairs": {f"{b}_vs_{a}": asdict(c) for (a, b), c in comps.items()},
    }
    return "\n".join(lines), payload


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
    get_run_logger().info("%s: accuracy %.1f%% on %d questions", label, 100 * results.accuracy, len(results.results))
    return file_manifest(path, "eval-results", "eval", len(results.results), accuracy=results.accuracy, label=label)


@medtune_task(name="recall-compare-models", cache=False)
def compare_models_task(results: dict[str, Manifest], training: list[dict[str, Any]], out_dir: str) -> dict[str, str]:
    """Write ``comparison.md`` / ``.json`` / ``.png`` for base, control and recalled; publish them as artifacts."""
    out = Path(out_dir)
    named = [(label, EvalResults.load(m.path)) for label, m in results.items()]
    pairs = [(a, "recalled") for a in ("control", "base") if a in results and "recalled" in results]
    chart = accuracy_chart(named, out / "comparison.png")
    markdown, payload = comparison_report(named, pairs)
    if training:
        markdown += (
            "\n### Training (identical SFT settings)\n\n| set | rows | steps | loss first | loss last | model |\n"
        )
        markdown += "|---|---|---|---|---|---|\n"
        for t in training:
            markdown += (
                f"| {t['set']} | {t['rows']} | {t['steps']} | {t['loss_first']} | {t['loss_last']} | `{t['model']}` |\n"
            )
        payload["training"] = training
    md = out / "comparison.md"
    atomic_write_text(md, markdown)
    js = out / "comparison.json"
    atomic_write_text(js, json.dumps(payload, ensure_ascii=False, indent=1, default=str) + "\n")
    shown = markdown.replace(f"![accuracy per subject]({chart.name})", f"Bar chart: `{chart}`")
    publish_markdown("recall-comparison", shown, "Base vs control vs recalled (seed 1's table)")
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
