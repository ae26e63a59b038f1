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

import inspect
import json
import os
import re
from collections import Counter, defaultdict
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


class ChoiceScorer(Protocol):
    """A scorer that scores all options of one question at once (one pass over the shared context)."""

    def choice_loglikelihoods(self, context: str, continuations: Sequence[str]) -> list[float]:
        """The log-likelihood of each continuation after ``context``."""


class ChatGenerator(Protocol):
    def generate(self, conversations: Sequence[list[dict[str, str]]]) -> list[str]:
        """A reply per conversation (greedy)."""


class HFCausalLM:
    """A transformers causal LM: a :class:`LoglikelihoodScorer`, a :class:`ChoiceScorer` and a
    :class:`ChatGenerator`, with bounded memory.

    Only the positions whose next token is scored get logits (``logits_to_keep`` with per-row positions), so memory
    grows with the questions' options, never with ``sequence x vocabulary``. Options of one question share their
    context: when they differ only in their last token (the letters " A" .. " D") one forward pass scores them all;
    otherwise (option texts) the context runs once and its key/value cache is shared by the options' batch.
    """

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
        #: forward passes run (what the one-pass test counts)
        self.forward_passes = 0

    # -- tokens ------------------------------------------------------------------------------------------------------
    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation token ids (lm-eval: a continuation's leading space belongs to it)."""
        tok = self.tokenizer
        n_space = len(context) - len(context.rstrip(" "))
        context, continuation = context[: len(context) - n_space], " " * n_space + continuation
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
        if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
            return ctx, whole[len(ctx) :]
        return ctx, tok(continuation, add_special_tokens=False)["input_ids"]

    # -- bounded scoring -----------------------------------------------------------------------------------------------
    def _score(self, seqs: Sequence[list[int]], targets: Sequence[list[tuple[int, list[int]]]]) -> list[list[Any]]:
        """For row ``r`` and each ``(position, tokens)`` of ``targets[r]``: the log-probabilities of ``tokens`` as the
        token after ``position``. One batched forward pass; logits only at the wanted positions."""
        import torch

        width = max(len(s) for s in seqs)
        n_pos = max(len(t) for t in targets)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        keep = torch.zeros((len(seqs), n_pos), dtype=torch.long)
        for r, (ids, want) in enumerate(zip(seqs, targets, strict=True)):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
            positions = [p for p, _ in want]
            keep[r] = torch.tensor(positions + [positions[-1]] * (n_pos - len(positions)))
        with torch.no_grad():
            self.forward_passes += 1
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), logits_to_keep=keep
            ).logits
            out = []
            for r, want in enumerate(targets):
                logp = torch.log_softmax(logits[r, : len(want)].float(), dim=-1).cpu()
                out.append([logp[k, tokens] for k, (_, tokens) in enumerate(want)])
        return out

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        """Each continuation scored after its context, requests batched by length (one sequence per request)."""
        encoded = []
        for context, continuation in requests:
            ctx, cont = self._split(context, continuation)
            ids = (ctx + cont)[-self.max_length :]
            encoded.append((ids, len(cont)))
        out: list[float] = [0.0] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))  # similar lengths batch together
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            seqs = [encoded[i][0] for i in idx]
            targets = [
                [(len(ids) - n + j - 1, [ids[len(ids) - n + j]]) for j in range(n)]
                for ids, n in (encoded[i] for i in idx)
            ]
            for i, scored in zip(idx, self._score(seqs, targets), strict=True):
                out[i] = float(sum(float(t.sum()) for t in scored))
        return out

    def choice_loglikelihoods(self, context: str, continuations: Sequence[str]) -> list[float]:
        """Every option of one question after its shared context (see the class doc)."""
        return self.choice_loglikelihoods_batch([(context, list(continuations))])[0]

    def choice_loglikelihoods_batch(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        """Options of several questions: letter-like options (one last token apart) of a batch of questions share
        one forward pass; other questions go through :meth:`_shared_prefix`."""
        results: list[list[float] | None] = [None] * len(items)
        one_pass: list[tuple[int, list[int], list[int], list[int]]] = []
        for qi, (context, conts) in enumerate(items):
            split = [self._split(context, c) for c in conts]
            ctx = split[0][0]
            tails = [c for _, c in split]
            same_ctx = all(c == ctx for c, _ in split)
            if same_ctx and len({len(t) for t in tails}) == 1 and len({tuple(t[:-1]) for t in tails}) == 1:
                prefix = tails[0][:-1]
                seq = (ctx + prefix)[-self.max_length :]
                one_pass.append((qi, seq, prefix, [t[-1] for t in tails]))
            else:
                results[qi] = self._shared_prefix(split)
        one_pass.sort(key=lambda x: -len(x[1]))
        for b in range(0, len(one_pass), self.batch_size):
            chunk = one_pass[b : b + self.batch_size]
            targets = []
            for _, seq, prefix, last in chunk:
                start = len(seq) - len(prefix)
                want = [(start + j - 1, [prefix[j]]) for j in range(len(prefix))]
                targets.append([*want, (len(seq) - 1, last)])
            for (qi, _, _, _), scored in zip(chunk, self._score([c[1] for c in chunk], targets), strict=True):
                shared = float(sum(float(t.sum()) for t in scored[:-1]))
                results[qi] = [shared + float(x) for x in scored[-1]]
        return [r if r is not None else [] for r in results]

    def _shared_prefix(self, split: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """Options whose token sequences differ in more than their last token: the context runs once (its last
        position scores each option's first token) and its key/value cache serves the batch of option tails."""
        import torch

        ctx = split[0][0][-self.max_length :]
        if any(c != split[0][0] for c, _ in split):  # the tokenizer merged context and option: score them apart
            return self.loglikelihood([(self.tokenizer.decode(c), self.tokenizer.decode(t)) for c, t in split])
        tails = [t for _, t in split]
        with torch.no_grad():
            self.forward_passes += 1
            first = self.model(input_ids=torch.tensor([ctx], device=self.device), use_cache=True, logits_to_keep=1)
            first_logp = torch.log_softmax(first.logits[0, -1].float(), dim=-1).cpu()
            scores = [float(first_logp[t[0]]) for t in tails]
            longest = max(len(t) for t in tails)
            if longest > 1:
                cache = getattr(first, "cache", None) or first.past_key_values
                cache.batch_repeat_interleave(len(tails))
                params = inspect.signature(self.model.forward).parameters
                cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
                width = longest - 1
                pad = self.tokenizer.pad_token_id
                ids = torch.full((len(tails), width), pad, dtype=torch.long)
                mask = torch.zeros((len(tails), len(ctx) + width), dtype=torch.long)
                mask[:, : len(ctx)] = 1
                for r, t in enumerate(tails):
                    ids[r, : len(t) - 1] = torch.tensor(t[:-1])
                    mask[r, len(ctx) : len(ctx) + len(t) - 1] = 1
                positions = torch.arange(len(ctx), len(ctx) + width).unsqueeze(0).expand(len(tails), -1)
                self.forward_passes += 1
                logits = self.model(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=positions.to(self.device),
                    use_cache=True,
                    **{cache_arg: cache},
                ).logits
                for r, t in enumerate(tails):
                    if len(t) > 1:
                        logp = torch.log_softmax(logits[r, : len(t) - 1].float(), dim=-1).cpu()
                        scores[r] += float(logp[torch.arange(len(t) - 1), torch.tensor(t[1:])].sum())
        return scores

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


#: A model that gives one letter for at least this share of the questions (well beyond that letter's share of the gold
#: answers) measures nothing: a base model that answers "A" to everything scores the share of A answers. Its
#: comparisons are marked "not informative".
DEGENERATE_SHARE = 0.8


@dataclass
class EvalResults:
    model: str
    method: str
    results: list[QuestionResult]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(np.mean([r.correct for r in self.results])) if self.results else 0.0

    def letter_distribution(self) -> dict[str, float]:
        """Share of the questions answered with each letter ("none" for a reply without one), largest first."""
        counts = Counter(r.pred or "none" for r in self.results)
        total = max(1, len(self.results))
        return {k: round(v / total, 4) for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}

    def degenerate(self, share: float = DEGENERATE_SHARE) -> str | None:
        """Why this model's answers measure nothing (one letter for most questions), or None."""
        dist = self.letter_distribution()
        if not dist:
            return None
        letter, top = next(iter(dist.items()))
        gold = sum(r.gold == letter for r in self.results) / len(self.results)
        if top >= share and top - gold >= 0.2:  # not merely following gold answers that are mostly one letter
            what = "no letter" if letter == "none" else f'"{letter}"'
            return f"{self.model or 'the model'} answers {what} to {top:.0%} of the questions"
        return None

    def save(self, path: str | os.PathLike[str]) -> Path:
        payload = {
            "model": self.model,
            "method": self.method,
            "accuracy": round(self.accuracy, 6),
            "predictions": self.letter_distribution(),
            "degenerate": self.degenerate(),
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


def _progress(total: int, desc: str, show: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="question", disable=not show)


def evaluate_loglikelihood(
    questions: Sequence[MultipleChoice],
    scorer: LoglikelihoodScorer | ChoiceScorer,
    *,
    continuation: str = "letter",
    normalize: bool = False,
    header: str = ZH_LOGLIK_HEADER,
    model_name: str = "",
    chunk: int = 32,
    show_progress: bool = False,
) -> EvalResults:
    """Score every option of every question; predict the most likely option.

    ``continuation="letter"`` scores " A" .. " D" after the prompt (needs a model that follows the format);
    ``"text"`` scores each option's own text, which works for weak base models too, ``normalize`` dividing by its
    length in characters (lm-eval's ``acc_norm``). Questions stream through the scorer ``chunk`` at a time with a
    progress bar; a :class:`ChoiceScorer` scores a question's options from one pass over the shared context."""
    _check(questions)
    if continuation not in ("letter", "text"):
        raise MedtuneError("continuation must be 'letter' or 'text'")
    batch_choices = getattr(scorer, "choice_loglikelihoods_batch", None)
    results = []
    with _progress(len(questions), f"evaluating {model_name}".strip(), show_progress) as bar:
        for start in range(0, len(questions), chunk):
            part = questions[start : start + chunk]
            items = []
            for q in part:
                conts = [f" {k}" if continuation == "letter" else f" {v}" for k, v in q.options.items()]
                items.append((loglik_prompt(q, header), conts))
            if batch_choices is not None:
                lls = batch_choices(items)
            else:  # a plain scorer: one request per option
                flat = scorer.loglikelihood([(ctx, c) for ctx, conts in items for c in conts])  # type: ignore[union-attr]
                lls, pos = [], 0
                for _, conts in items:
                    lls.append(flat[pos : pos + len(conts)])
                    pos += len(conts)
            for q, ll in zip(part, lls, strict=True):
                scores = {}
                for (letter, text), value in zip(q.options.items(), ll, strict=True):
                    length = len(text) if continuation == "text" else 1
                    scores[letter] = value / max(length, 1) if normalize else value
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
            bar.update(len(part))
    return EvalResults(model_name, f"loglikelihood-{continuation}" + ("-norm" if normalize else ""), results)


def evaluate_generation(
    questions: Sequence[MultipleChoice],
    generator: ChatGenerator,
    *,
    template: MCQPromptTemplate = ZH_MCQ_TEMPLATE,
    model_name: str = "",
    chunk: int = 32,
    show_progress: bool = False,
) -> EvalResults:
    """Ask each question through the chat template and parse the answer letter from the reply (streamed in chunks,
    with a progress bar)."""
    _check(questions)
    results = []
    with _progress(len(questions), f"evaluating {model_name}".strip(), show_progress) as bar:
        for start in range(0, len(questions), chunk):
            part = questions[start : start + chunk]
            convs = []
            for q in part:
                conv = [{"role": "system", "content": template.system}] if template.system else []
                convs.append([*conv, {"role": "user", "content": template.user(q)}])
            for q, reply in zip(part, generator.generate(convs), strict=True):
                pred = parse_answer(reply, list(q.options))
                results.append(
                    QuestionResult(
                        q.id or "", q.subject or "unknown", q.answer or "", pred, pred == q.answer, reply=reply
                    )
                )
            bar.update(len(part))
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
    #: why the comparison measures nothing (a model gives one letter for most questions), or None
    not_informative: str | None = None

    @property
    def delta(self) -> float:
        return self.accuracy_b - self.accuracy_a

    @property
    def informative(self) -> bool:
        return self.not_informative is None


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
        "; ".join(r for r in (a.degenerate(), b.degenerate()) if r) or None,
    )


def comparison_markdown(comp: Comparison) -> str:
    if not comp.informative:
        verdict = (
            f"**{comp.name_b}** vs **{comp.name_a}** on {comp.n} paired questions: **not informative** — "
            f"{comp.not_informative}: such an accuracy is the share of that letter among the gold answers, and the "
            f"difference ({comp.accuracy_b:.1%} vs {comp.accuracy_a:.1%}) says nothing about what either model "
            "knows. Score the option texts instead (method loglikelihood-text) or use a stronger base model."
        )
        return verdict + "\n"
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
