"""``medtune recall``: evaluate a model on a multiple-choice benchmark and compare two result files::

    medtune recall evaluate --model out/train_eval/recalled-XXXX/merged --benchmark data/ceval --out recalled.json
    medtune recall evaluate -m embedded:smollm2-135m-instruct -b a.csv -b b.jsonl --method generation --limit 40
    medtune recall compare control.json recalled.json [--out comparison.md] [--chart comparison.png]

``compare`` pairs the two files question by question and prints the McNemar exact p-value (overall and per subject),
or "not informative" when a model gives one letter for most questions. The work is the core's
(:mod:`medtune_core.recall.benchmark_eval`, :mod:`medtune_core.recall.evaluate`).
Heavy modules (torch, transformers) are imported inside the commands, so ``medtune --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import fail
from medtune_core.errors import MedtuneError

app = typer.Typer(
    help="Eval-driven recall: evaluate models on a benchmark, compare result files.", no_args_is_help=True
)


@app.command()
def evaluate(
    model: Annotated[str, typer.Option("--model", "-m", help="tiny, embedded:NAME, a (merged) model folder, hub id.")],
    benchmark: Annotated[
        list[Path], typer.Option("--benchmark", "-b", help="Benchmark file or folder (repeat for several).")
    ],
    method: Annotated[
        str,
        typer.Option(
            help="loglikelihood (letters, one pass; base models), loglikelihood-text (option texts, length-normalised; "
            "weak base models) or generation (chat models)."
        ),
    ] = "loglikelihood",
    out: Annotated[Path, typer.Option(help="Results JSON (per-question correctness).")] = Path("eval_results.json"),
    subject: Annotated[list[str] | None, typer.Option(help="Keep only this subject (repeatable).")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many questions, balanced across subjects.")] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="generation: tokens per answer.")] = 32,
    device: Annotated[str | None, typer.Option(help="cpu or cuda[:N]; default: cuda when present.")] = None,
    name: Annotated[str | None, typer.Option(help="Model name in the results (default: --model).")] = None,
) -> None:
    """Multiple-choice accuracy per subject with 95% bootstrap intervals; writes the results file."""
    from pydantic import ValidationError

    from medtune_core.recall.benchmark_eval import RecallEvalOptions, evaluate_benchmark
    from medtune_core.recall.evaluate import accuracy_by_subject

    try:
        options = RecallEvalOptions(
            method=method, max_questions=limit, batch_size=batch_size, max_new_tokens=max_new_tokens, device=device
        )
        results = evaluate_benchmark(model, benchmark, subjects=subject, options=options, name=name)
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()), 2)
    except (MedtuneError, FileNotFoundError, OSError) as exc:
        fail(str(exc))
    results.save(out)
    typer.echo("| subject | n | accuracy | 95% CI |\n|---|---|---|---|")
    for r in accuracy_by_subject(results):
        ci = f"[{r['ci95_low']:.1%}, {r['ci95_high']:.1%}]"
        typer.echo(f"| {r['subject']} | {r['n']} | {r['accuracy']:.1%} | {ci} |")
    answers = ", ".join(f"{k} {v:.0%}" for k, v in results.letter_distribution().items())
    n = len(results.results)
    typer.echo(f"{out}: {n} questions, accuracy {results.accuracy:.1%} ({results.method}); answers: {answers}")
    if results.degenerate():
        typer.echo(f"not informative: {results.degenerate()}; try --method loglikelihood-text", err=True)


@app.command()
def compare(
    result1: Annotated[Path, typer.Argument(help="Results file A (e.g. the control or base model).")],
    result2: Annotated[Path, typer.Argument(help="Results file B (e.g. the recalled model).")],
    out: Annotated[Path | None, typer.Option(help="Also write the markdown here (and the JSON beside it).")] = None,
    chart: Annotated[Path | None, typer.Option(help="Bar chart PNG of both models' accuracy per subject.")] = None,
) -> None:
    """Pair two result files by question: accuracy, Δ, McNemar exact p-value, overall and per subject."""
    from dataclasses import asdict

    from medtune_core.dataio import atomic_write_text
    from medtune_core.recall.evaluate import EvalResults, accuracy_chart, compare_results, comparison_markdown

    try:
        a, b = EvalResults.load(result1), EvalResults.load(result2)
        same = a.model == b.model or not (a.model and b.model)
        names = (result1.stem, result2.stem) if same else (a.model, b.model)
        comp = compare_results(a, b, name_a=names[0], name_b=names[1])
    except (MedtuneError, FileNotFoundError, KeyError, TypeError, json.JSONDecodeError) as exc:
        fail(f"{result1} / {result2}: {exc}")
    markdown = comparison_markdown(comp)
    if comp.missing:
        markdown += f"\n{comp.missing} questions are in only one of the files (left out).\n"
    if chart is not None:
        accuracy_chart([(comp.name_a, a), (comp.name_b, b)], chart)
        markdown += f"\n![accuracy per subject]({chart.name})\n"
    typer.echo(markdown, nl=False)
    if out is not None:
        atomic_write_text(out, markdown)
        atomic_write_text(out.with_suffix(".json"), json.dumps(asdict(comp), ensure_ascii=False, indent=1) + "\n")
    summary = {"p_value": round(comp.p_value, 6), "delta": round(comp.delta, 6), "n": comp.n}
    if not comp.informative:
        summary["not_informative"] = comp.not_informative
    typer.echo(json.dumps(summary, ensure_ascii=False))
