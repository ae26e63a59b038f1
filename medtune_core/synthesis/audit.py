"""Audit an agent output file with the clinical consistency rules (``medtune audit FILE``).

Reads any file the synthesis writes — ``instruction`` (alpaca), ``conversations`` (ShareGPT) or ``messages`` rows,
from template mode, LLM mode or elsewhere — takes each row's input and answer, and runs the rules of
:mod:`medtune_core.synthesis.clinical` on them. The agent of a row is its ``meta.agent``, else the one given, else
the one whose file name (``drug_seed.jsonl``) or system prompt the row carries; a row of no known agent is checked
on the field names the built-in agents share.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune_core.errors import MedtuneError
from medtune_core.synthesis import vocab as V
from medtune_core.synthesis.base import AGENTS, Agent, facts_from_fields
from medtune_core.synthesis.clinical import check_facts
from medtune_core.synthesis.registry import agent_names

#: How many rows per rule the report quotes.
EXAMPLES_PER_RULE = 3


@dataclass
class AuditReport:
    """Violations of one file, by rule; rows that could not be read are listed, not silently skipped."""

    path: str
    rows: int = 0
    checked: int = 0
    violating_rows: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.by_rule and not self.unreadable

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "checked": self.checked,
            "violating_rows": self.violating_rows,
            "violations": dict(self.by_rule.most_common()),
            "examples": self.examples,
            "unreadable": self.unreadable,
        }

    def text(self) -> str:
        lines = [f"{self.path}: {self.checked} of {self.rows} rows checked, {self.violating_rows} violate a rule"]
        for rule, n in self.by_rule.most_common():
            lines.append(f"  {rule}: {n}")
            lines += [f"    {e}" for e in self.examples.get(rule, [])]
        lines += [f"  unreadable {u}" for u in self.unreadable]
        return "\n".join(lines)


def _json_object(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.startswith("```"):
        text = text.strip("`")
    decoder = json.JSONDecoder()
    for i in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            obj, _ = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _turns(row: dict[str, Any]) -> tuple[str | None, Any, Any]:
    """(system prompt, input, answer) of an alpaca, ShareGPT or messages row."""
    if "output" in row:
        return row.get("instruction"), row.get("input"), row.get("output")
    turns = row.get("messages") or row.get("conversations") or []
    role = lambda t: t.get("role") or {"human": "user", "gpt": "assistant"}.get(t.get("from"), t.get("from"))  # noqa: E731
    text = lambda t: t.get("content") if "content" in t else t.get("value")  # noqa: E731
    system = next((text(t) for t in turns if role(t) == "system"), row.get("system"))
    users = [text(t) for t in turns if role(t) == "user"]
    answers = [text(t) for t in turns if role(t) == "assistant"]
    return system, users[-1] if users else None, answers[-1] if answers else None


def _agent_of(row: dict[str, Any], system: str | None, default: Agent | None) -> Agent | None:
    name = (row.get("meta") or {}).get("agent")
    if name in AGENTS:
        return AGENTS[name]
    if default is not None:
        return default
    if system:
        return next((a for a in AGENTS.values() if system.startswith(a.system_prompt)), None)
    return None


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, None, f"invalid JSON ({exc.msg}, column {exc.colno})"
                continue
            yield n, row if isinstance(row, dict) else None, "" if isinstance(row, dict) else "not a JSON object"


def audit_file(
    path: str | os.PathLike[str],
    agent: str | None = None,
    vocabulary: Sequence[str | os.PathLike[str]] = (),
) -> AuditReport:
    """Run every clinical rule on every row of ``path``; ``vocabulary``: extra vocabulary files (a formulary)."""
    p = Path(path)
    if not p.is_file():
        raise MedtuneError(f"{p}: no such file")
    if agent is not None and agent not in AGENTS:
        raise MedtuneError(f"unknown agent {agent!r}; known agents: {', '.join(agent_names())}")
    by_name = AGENTS.get(agent or "") or next((AGENTS[n] for n in AGENTS if p.name.startswith(f"{n}_")), None)
    report = AuditReport(str(p))
    with V.use_vocabulary(vocabulary):
        for n, row, problem in _rows(p):
            report.rows += 1
            if row is None:
                report.unreadable.append(f"{p}:{n}: {problem}")
                continue
            system, inp, out = _turns(row)
            inp, out = _json_object(inp), _json_object(out)
            if inp is None or out is None:
                report.unreadable.append(f"{p}:{n}: no JSON input and answer in the row")
                continue
            a = _agent_of(row, system, by_name)
            facts = a.clinical_facts(inp, out) if a is not None else facts_from_fields(inp, out)
            report.checked += 1
            violations = check_facts(facts)
            report.violating_rows += bool(violations)
            for v in violations:
                report.by_rule[v.rule] += 1
                shown = report.examples.setdefault(v.rule, [])
                if len(shown) < EXAMPLES_PER_RULE:
                    shown.append(f"line {n}: {v.problem}")
    return report
