"""Evaluate one model on a multiple-choice benchmark: what ``medtune recall evaluate`` and the flow's evaluation
task both run (plain Python, no Prefect).

Methods (a registry, so the CLI and the flow offer the same choices):

- ``loglikelihood``: the option letters " A" .. " D" scored after the prompt, all four from one forward pass (a model
  that follows the answer format; a weak base model often prefers one letter whatever the question);
- ``loglikelihood-text``: each option's own text scored after the prompt, divided by its length (lm-eval's
  ``acc_norm``; works for weak base models), the context run once and its cache shared by the options;
- ``generation``: the question asked through the chat template, the letter parsed from the reply (chat models).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from medtune_core.errors import MedtuneError
from medtune_core.formats import MultipleChoice
from medtune_core.recall.benchmarks import load_benchmark
from medtune_core.recall.evaluate import EvalResults, HFCausalLM, evaluate_generation, evaluate_loglikelihood

#: method name → how a loaded model evaluates a list of questions
METHODS: dict[str, Callable[..., EvalResults]] = {
    "loglikelihood": evaluate_loglikelihood,
    "loglikelihood-text": partial(evaluate_loglikelihood, continuation="text", normalize=True),
    "generation": evaluate_generation,
}
#: the method choices, derived from the registry
EvalMethod = Literal[tuple(METHODS)]  # type: ignore[valid-type]


class RecallEvalOptions(BaseModel):
    """How a model is evaluated on the benchmark (part of the evaluation task's cache key)."""

    model_config = ConfigDict(extra="forbid")

    method: EvalMethod = Field(
        "loglikelihood",
        description="loglikelihood: option letters scored by the LM, one pass per question (base models that follow "
        "the format); loglikelihood-text: each option's text, length-normalised (weak base models); generation: ask "
        "through the chat template and parse the answer letter (chat models).",
    )
    max_questions: int | None = Field(
        None, ge=1, description="Evaluate at most this many questions (balanced across subjects); empty: all."
    )
    batch_size: int = Field(8, ge=1, le=512)
    max_new_tokens: int = Field(32, ge=1, le=4096, description="generation: tokens generated per answer.")
    device: str | None = Field(None, description="cpu or cuda[:N]; empty: cuda when present.")
    show_progress: bool = Field(True, description="A progress bar per model (stderr).")


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
    questions = balanced_subset(bench.questions, opts.max_questions)
    lm = HFCausalLM(path, batch_size=opts.batch_size, device=_device(opts.device), max_new_tokens=opts.max_new_tokens)
    label = name or str(model)
    results = METHODS[opts.method](questions, lm, model_name=label, show_progress=opts.show_progress)
    results.meta.update(
        model_path=str(path),
        benchmark=[str(f) for f in benchmark_files],
        questions=len(questions),
        of=len(bench),
        options=opts.model_dump(mode="json"),
    )
    return results


__all__: list[str] = ["METHODS", "EvalMethod", "RecallEvalOptions", "balanced_subset", "evaluate_benchmark"]
