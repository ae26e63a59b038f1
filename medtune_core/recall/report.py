"""The comparison report of several evaluated models (base, random control, recalled): per-subject accuracy with
bootstrap 95% intervals for every model, the predicted-letter distribution of each, and for each pair the Δ and
McNemar exact p-value — or "not informative" where a model gives one letter for most questions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from medtune_core.recall.evaluate import EvalResults, accuracy_by_subject, compare_results, comparison_markdown
from medtune_core.recall.search import fmt_number

__all__ = ["comparison_report", "fmt_number"]


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "–"
    return f"{row['accuracy']:.1%} [{row['ci95_low']:.1%}, {row['ci95_high']:.1%}]"


def _distribution(res: EvalResults) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in res.letter_distribution().items())


def comparison_report(
    named: Sequence[tuple[str, EvalResults]],
    pairs: Sequence[tuple[str, str]],
    *,
    chart: str | None = None,
    title: str = "Eval-driven recall: base vs random control vs recalled",
) -> tuple[str, dict[str, Any]]:
    """A markdown report and its JSON: per-subject accuracy with 95% bootstrap CIs for every model, the letters each
    model answers, and for each ``(a, b)`` pair the McNemar exact p-value of ``b`` vs ``a`` (paired by question id),
    overall and per subject; a pair with a degenerate model says "not informative" instead of a Δ."""
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
    head += ["", "| model | accuracy | answers given | informative |", "|---|---|---|---|"]
    for name, res in named:
        bad = res.degenerate()
        head.append(f"| {name} | {res.accuracy:.1%} | {_distribution(res)} | {'no: ' + bad if bad else 'yes'} |")
    head.append("")
    cols = [n for n, _ in named] + [f"{b} − {a} (p)" for a, b in pairs]
    lines = [*head, "| subject | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    rows_json = []
    for s in subjects:
        n = max((t.get(s, {}).get("n", 0) for t in tables.values()), default=0)
        cells = [_cell(tables[name].get(s)) for name, _ in named]
        entry: dict[str, Any] = {"subject": s, "n": n, "models": {name: tables[name].get(s) for name, _ in named}}
        for a, b in pairs:
            comp = comps[(a, b)]
            row = next((r for r in comp.subjects if r["subject"] == s), None)
            if row is None:
                cells.append("–")
            elif not comp.informative:
                cells.append("not informative")
            else:
                cells.append(f"{row['delta']:+.1%} (p={row['p_value']:.4g})")
            entry[f"{b}_vs_{a}"] = row
        lines.append(f"| {s} | {n} | " + " | ".join(cells) + " |")
        rows_json.append(entry)
    lines.append("")
    for a, b in pairs:
        lines += [f"### {b} vs {a}", "", comparison_markdown(comps[(a, b)])]
    if chart:
        lines += [f"![accuracy per subject]({chart})", ""]
    payload = {
        "models": {
            name: {
                "model": res.model,
                "method": res.method,
                "accuracy": round(res.accuracy, 6),
                "predictions": res.letter_distribution(),
                "degenerate": res.degenerate(),
            }
            for name, res in named
        },
        "subjects": rows_json,
        "pairs": {f"{b}_vs_{a}": {**asdict(c), "informative": c.informative} for (a, b), c in comps.items()},
    }
    return "\n".join(lines), payload
