"""Multiple-choice evaluation and paired comparison of two models.

- Log-likelihood (lm-eval-harness style, for base models): each option's continuation (its letter, or its text) is
  scored after the prompt by a causal LM; the prediction is the highest log-likelihood (``normalize``: per character).
- Generation (for chat models): the question is asked through the chat template, the answer letter is parsed from
  the reply (``答案是 B``, ``The answer is B``, a leading ``B.``, a lone letter).
- Per-subject accuracy with percentile-bootstrap 95% intervals; a paired comparison of two result files (per-question
  correctness, McNemar's exact test: a two-sided binomial test on the discordant pairs), a markdown table and a bar
  chart.

The model is behind two small protocols (:class:`LoglikelihoodScorer`, :class:`ChatGenerator`), so a scripted scorer
tests the bookkeeping and :class:`HFCausalLM` runs a real model.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medtune_core.dataio import atomic_write_text
from medtune_core.errors import MedtuneError
from medtune_core.formats import ZH_MCQ_TEMPLATE, MCQPromptTemplate, MultipleChoice
from medtune_core.recall.search import save_png

# --------------------------------------------------------------------------- prompts and parsing

ZH_LOGLIK_HEADER = "以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n"


def loglik_prompt(q: MultipleChoice, header: str = ZH_LOGLIK_HEADER) -> str:
    """CMMLU/C-Eval's prompt in lm-eval-harness: header, ``题目：``, options, ``答案：``."""
    opts = "\n".join(f"{k}. {v}" for k, v in q.options.items())
    return header.format(subject=q.subject or "医学") + f"题目：{q.question}\n{opts}\n答案："


_ANSWER_PATTERNS = [
    r"答案\s*(?:应该|应)?\s*(?:是|为|选)?\s*[:：]?\s*[（(\[]?\s*([A-H])(?![A-Za-z])",
    r"(?i:answer)\s*(?:is|:)?\s*[:：]?\s*[（(\[]?\s*([A-H])(?![A-Za-z])",
    r"(?i:option)\s*[（(\[]?([A-H])(?![A-Za-z])",
    r"选\s*[（(\[]?([A-H])(?![A-Za-z])",
    r"^\s*[（(\[]?([A-H])(?![A-Za-z])",
    r"(?<![A-Za-z])([A-H])(?![A-Za-z])",
]


def parse_answer(text: str, letters: Sequence[str] = "ABCD") -> str | None:
    """The option letter a reply gives, or None (only the question's own letters count)."""
    allowed = set(letters)
    for pattern in _ANSWER_PATTERNS:
        for m in re.finditer(pattern, text, flags=re.MULTILINE):
            if m.group(1) in allowed:
                return m.group(1)
    return None


# --------------------------------------------------------------------------- model protocols


class LoglikelihoodScorer(Protocol):
    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        """Sum of log-probabilities of each continuation given its context."""


class ChatGenerator(Protocol):
    def generate(self, conversations: Sequence[list[dict[str, str]]]) -> list[str]:
        """A reply per conversation (greedy)."""


class HFCausalLM:
    """A transformers causal LM, both a :class:`LoglikelihoodScorer` and a :class:`ChatGenerator`, batched."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        batch_size: int = 8,
        device: str = "cpu",
        max_length: int = 2048,
        max_new_tokens: int = 32,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from medtune_core.models.registry import resolve_model

        path = resolve_model(model)
        self.name = str(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.batch_size, self.device, self.max_length, self.max_new_tokens = (
            batch_size,
            device,
            max_length,
            max_new_tokens,
        )

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        import torch

        tok = self.tokenizer
        encoded = []
        for context, continuation in requests:
            # lm-eval: a continuation's leading space belongs to it, not to the context
            n_space = len(context) - len(context.rstrip(" "))
            context, continuation = context[: len(context) - n_space], " " * n_space + continuation
            ctx = tok(context, add_special_tokens=False)["input_ids"]
            whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
            cont = (
                whole[len(ctx) :]
                if whole[: len(ctx)] == ctx
                else tok(continuation, add_special_tokens=False)["input_ids"]
            )
            ids = (ctx + cont)[-self.max_length :]
            encoded.append((ids, len(cont)))
        out: list[float] = [0.0] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))  # similar lengths batch together
        pad = tok.pad_token_id
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            width = max(len(encoded[i][0]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids = encoded[i][0]
                input_ids[r, : len(ids)] = torch.tensor(ids)
                mask[r, : len(ids)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for r, i in enumerate(idx):
                ids, n_cont = encoded[i]
                pos = torch.arange(len(ids) - n_cont, len(ids))
                out[i] = float(logp[r, pos - 1, torch.tensor(ids)[pos]].sum())
        return out

    def generate(self, conversations: Sequence[list[dict[str, str]]]) -> list[str]:
        import torch

        tok = self.tokenizer
        tok.padding_side = "left"
        replies: list[str] = []
        for b in range(0, len(conversations), self.batch_size):
            texts = [
                tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                for c in conversations[b : b + self.batch_size]
            ]
            batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            with torch.no_grad():
                gen = self.model.generate(
                    **batch, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
                )
            replies += tok.batch_decode(gen[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        return replies


# --------------------------------------------------------------------------- results


@dataclass
class QuestionResult:
    id: str
    subject: str
    gold: str
    pred: str | None
    correct: bool
    scores: dict[str, float] | None = None
    reply: str | None = None


@dataclass
class EvalResults:
    model: str
    method: str
    results: list[QuestionResult]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(np.mean([r.correct for r in self.results])) if self.results else 0.0

    def save(self, path: str | os.PathLike[str]) -> Path:
        payload = {
            "model": self.model,
            "method": self.method,
            "accuracy": self.accuracy,
            "meta": self.meta,
            "subjects": accuracy_by_subject(self),
            "results": [asdict(r) for r in self.results],
        }
        atomic_write_text(path, json.dumps(payload, ensure_ascii=False, indent=1) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EvalResults:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(raw["model"], raw["method"], [QuestionResult(**r) for r in raw["results"]], raw.get("meta", {}))


def _check(questions: Sequence[MultipleChoice]) -> None:
    for q in questions:
        if q.answer is None:
            raise MedtuneError(f"question {q.id}: no answer to grade against")


def evaluate_loglikelihood(
    questions: Sequence[MultipleChoice],
    scorer: LoglikelihoodScorer,
    *,
    continuation: str = "letter",
    normalize: bool = False,
    header: str = ZH_LOGLIK_HEADER,
    model_name: str = "",
) -> EvalResults:
    """Score every option of every question in one batched call; predict the most likely option."""
    _check(questions)
    if continuation not in ("letter", "text"):
        raise MedtuneError("continuation must be 'letter' or 'text'")
    requests, owners = [], []
    for qi, q in enumerate(questions):
        ctx = loglik_prompt(q, header)
        for letter, text in q.options.items():
            requests.append((ctx, f" {letter}" if continuation == "letter" else f" {text}"))
            owners.append((qi, letter, len(text) if continuation == "text" else 1))
    lls = scorer.loglikelihood(requests)
    per_q: list[dict[str, float]] = [{} for _ in questions]
    for (qi, letter, length), ll in zip(owners, lls, strict=True):
        per_q[qi][letter] = ll / max(length, 1) if normalize else ll
    results = []
    for q, scores in zip(questions, per_q, strict=True):
        pred = max(scores, key=lambda k: (scores[k], -ord(k)))
        results.append(
            QuestionResult(
                q.id or "",
                q.subject or "unknown",
                q.answer or "",
                pred,
                pred == q.answer,
                {k: round(v, 6) for k, v in scores.items()},
            )
        )
    return EvalResults(model_name, f"loglikelihood-{continuation}" + ("-norm" if normalize else ""), results)


def evaluate_generation(
    questions: Sequence[MultipleChoice],
    generator: ChatGenerator,
    *,
    template: MCQPromptTemplate = ZH_MCQ_TEMPLATE,
    model_name: str = "",
) -> EvalResults:
    """Ask each question through the chat template and parse the answer letter from the reply."""
    _check(questions)
    convs = []
    for q in questions:
        conv = [{"role": "system", "content": template.system}] if template.system else []
        convs.append([*conv, {"role": "user", "content": template.user(q)}])
    replies = generator.generate(convs)
    results = []
    for q, reply in zip(questions, replies, strict=True):
        pred = parse_answer(reply, list(q.options))
        results.append(
            QuestionResult(q.id or "", q.subject or "unknown", q.answer or "", pred, pred == q.answer, reply=reply)
        )
    return EvalResults(model_name, "generation", results)


def bootstrap_ci(
    correct: Sequence[bool], *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``correct``."""
    x = np.asarray(correct, dtype=np.float64)
    if len(x) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def accuracy_by_subject(results: EvalResults, *, n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for r in results.results:
        groups[r.subject].append(r.correct)
    groups_all = {**dict(sorted(groups.items())), "ALL": [r.correct for r in results.results]}
    rows = []
    for subject, correct in groups_all.items():
        lo, hi = bootstrap_ci(correct, n_boot=n_boot, seed=seed)
        rows.append(
            {
                "subject": subject,
                "n": len(correct),
                "accuracy": round(float(np.mean(correct)), 4),
                "ci95_low": round(lo, 4),
                "ci95_high": round(hi, 4),
            }
        )
    return rows


# --------------------------------------------------------------------------- paired comparison


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    from scipy.stats import binomtest

    n = a_only + b_only
    return 1.0 if n == 0 else float(binomtest(min(a_only, b_only), n, 0.5).pvalue)


@dataclass
class Comparison:
    name_a: str
    name_b: str
    n: int
    accuracy_a: float
    accuracy_b: float
    a_only: int  # questions A got right and B wrong
    b_only: int
    p_value: float
    subjects: list[dict[str, Any]]
    missing: int = 0  # questions present in only one file

    @property
    def delta(self) -> float:
        return self.accuracy_b - self.accuracy_a


def compare_results(
    a: EvalResults, b: EvalResults, *, name_a: str | None = None, name_b: str | None = None
) -> Comparison:
    """Pair two result sets question by question (by id) and test the difference."""
    ra = {r.id: r for r in a.results}
    rb = {r.id: r for r in b.results}
    common = [i for i in ra if i in rb]
    if not common:
        raise MedtuneError("the two result files share no question id")
    missing = len(set(ra) ^ set(rb))
    by_subject: dict[str, list[str]] = defaultdict(list)
    for i in common:
        by_subject[ra[i].subject].append(i)

    def row(subject: str, ids: list[str]) -> dict[str, Any]:
        ca = np.array([ra[i].correct for i in ids])
        cb = np.array([rb[i].correct for i in ids])
        a_only, b_only = int((ca & ~cb).sum()), int((~ca & cb).sum())
        return {
            "subject": subject,
            "n": len(ids),
            "accuracy_a": round(float(ca.mean()), 4),
            "accuracy_b": round(float(cb.mean()), 4),
            "delta": round(float(cb.mean() - ca.mean()), 4),
            "a_only": a_only,
            "b_only": b_only,
            "p_value": round(mcnemar_exact(a_only, b_only), 6),
        }

    rows = [row(s, by_subject[s]) for s in sorted(by_subject)]
    total = row("ALL", common)
    return Comparison(
        name_a or a.model or "A",
        name_b or b.model or "B",
        len(common),
        total["accuracy_a"],
        total["accuracy_b"],
        total["a_only"],
        total["b_only"],
        mcnemar_exact(total["a_only"], total["b_only"]),
        [*rows, total],
        missing,
    )


def comparison_markdown(comp: Comparison) -> str:
    lines = [
        f"**{comp.name_b}** vs **{comp.name_a}** on {comp.n} paired questions: "
        f"{comp.accuracy_b:.1%} vs {comp.accuracy_a:.1%} (Δ {comp.delta:+.1%}), "
        f"McNemar exact p = {comp.p_value:.4g} "
        f"({comp.b_only} only {comp.name_b} right, {comp.a_only} only {comp.name_a} right)",
        "",
        f"| subject | n | {comp.name_a} | {comp.name_b} | Δ | p |",
        "|---|---|---|---|---|---|",
    ]
    for r in comp.subjects:
        lines.append(
            f"| {r['subject']} | {r['n']} | {r['accuracy_a']:.1%} | {r['accuracy_b']:.1%} | "
            f"{r['delta']:+.1%} | {r['p_value']:.4g} |"
        )
    return "\n".join(lines) + "\n"


def accuracy_chart(named: Sequence[tuple[str, EvalResults]], path: str | os.PathLike[str]) -> Path:
    """Grouped bars: accuracy per subject (and ALL) of each result set, with bootstrap 95% error bars."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    tables = [(name, {r["subject"]: r for r in accuracy_by_subject(res)}) for name, res in named]
    subjects = [*sorted({s for _, t in tables for s in t if s != "ALL"}), "ALL"]
    fig = Figure(figsize=(max(6, 1.2 * len(subjects) * max(1, len(tables)) / 2), 4.5))
    ax = fig.subplots()
    width = 0.8 / max(1, len(tables))
    x = np.arange(len(subjects))
    for j, (name, table) in enumerate(tables):
        acc = [table.get(s, {}).get("accuracy", 0.0) for s in subjects]
        lo = [a - table.get(s, {}).get("ci95_low", a) for s, a in zip(subjects, acc, strict=True)]
        hi = [table.get(s, {}).get("ci95_high", a) - a for s, a in zip(subjects, acc, strict=True)]
        ax.bar(x + (j - (len(tables) - 1) / 2) * width, acc, width, yerr=[lo, hi], capsize=2, label=name)
    ax.set_xticks(x, subjects, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% bootstrap CI)")
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path)
