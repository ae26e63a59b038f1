"""Evaluation that knows when it measures nothing: one forward pass scores all four letters (same choices as four
passes), option texts share the context's cache, a model that gives one letter for most questions is flagged and its
comparison says "not informative", progress is shown. Real tiny model; scripted scorers only for the bookkeeping."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from medtune_core.formats import MultipleChoice
from medtune_core.models.tiny import tiny_model_path
from medtune_core.recall import load_benchmark
from medtune_core.recall.benchmark_eval import METHODS, RecallEvalOptions, balanced_subset
from medtune_core.recall.evaluate import EvalResults, HFCausalLM, compare_results, evaluate_loglikelihood
from medtune_core.recall.report import comparison_report
from medtune_core.samples import samples_dir


class FourPasses:
    """The same real model seen as a plain scorer: one sequence per (question, option), as before the one-pass path."""

    def __init__(self, lm: HFCausalLM) -> None:
        self.lm = lm

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        return self.lm.loglikelihood(requests)


@pytest.fixture(scope="module")
def tiny() -> HFCausalLM:
    return HFCausalLM(tiny_model_path(), batch_size=4)


@pytest.fixture(scope="module")
def questions() -> list[MultipleChoice]:
    return balanced_subset(load_benchmark([samples_dir() / "benchmark"]).questions, 8)


def test_one_pass_letters_give_the_same_choices_as_four_passes(tiny: HFCausalLM, questions) -> None:
    tiny.forward_passes = 0
    one = evaluate_loglikelihood(questions, tiny, model_name="tiny")
    passes_one = tiny.forward_passes
    tiny.forward_passes = 0
    four = evaluate_loglikelihood(questions, FourPasses(tiny), model_name="tiny")
    passes_four = tiny.forward_passes
    assert [r.pred for r in one.results] == [r.pred for r in four.results]
    for a, b in zip(one.results, four.results, strict=True):
        assert a.scores is not None and b.scores is not None
        assert np.allclose(list(a.scores.values()), list(b.scores.values()), atol=1e-3)
    # 8 questions in batches of 4: 2 passes for all 32 letters; one sequence per option needs 32 / 4 = 8
    assert passes_one == 2 and passes_four == 8


def test_option_texts_share_the_context_cache(tiny: HFCausalLM, questions) -> None:
    tiny.forward_passes = 0
    one = evaluate_loglikelihood(questions[:3], tiny, continuation="text", normalize=True)
    assert tiny.forward_passes <= 2 * 3  # context once, then the options' batch, per question
    four = evaluate_loglikelihood(questions[:3], FourPasses(tiny), continuation="text", normalize=True)
    assert [r.pred for r in one.results] == [r.pred for r in four.results]
    for a, b in zip(one.results, four.results, strict=True):
        assert np.allclose(list(a.scores.values()), list(b.scores.values()), atol=1e-3)
    assert one.method == "loglikelihood-text-norm"
    assert set(METHODS) == {"loglikelihood", "loglikelihood-text", "generation"}
    assert RecallEvalOptions(method="loglikelihood-text").method == "loglikelihood-text"


def test_progress_bar_is_shown(tiny: HFCausalLM, questions, capsys) -> None:
    evaluate_loglikelihood(questions[:2], tiny, model_name="tiny", show_progress=True)
    assert "evaluating tiny" in capsys.readouterr().err


class Scripted:
    """A scorer whose preferred letter is fixed (``always``) or the gold one (``knows``)."""

    def __init__(self, always: str | None = None, gold: dict[str, str] | None = None) -> None:
        self.always, self.gold = always, gold or {}

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        out = []
        for ctx, cont in requests:
            letter = cont.strip()
            want = self.always or self.gold.get(ctx)
            out.append(-0.1 if letter == want else -5.0)
        return out


def _mcq(answers: str) -> list[MultipleChoice]:
    return [
        MultipleChoice(f"问题{i}", {k: f"选项{k}{i}" for k in "ABCD"}, a, "anatomy", id=f"q{i}")
        for i, a in enumerate(answers)
    ]


def test_a_model_that_answers_one_letter_is_flagged_not_informative() -> None:
    from medtune_core.recall.evaluate import loglik_prompt

    qs = _mcq("ABCDABCDABCDABCDABCD")
    always_a = evaluate_loglikelihood(qs, Scripted("A"), model_name="base")
    knows = evaluate_loglikelihood(qs, Scripted(gold={loglik_prompt(q): q.answer for q in qs}), model_name="tuned")
    assert always_a.letter_distribution() == {"A": 1.0} and always_a.accuracy == 0.25
    assert always_a.degenerate() == 'base answers "A" to 100% of the questions'
    assert knows.degenerate() is None and knows.letter_distribution()["A"] == 0.25
    comp = compare_results(always_a, knows)
    assert not comp.informative and "100%" in (comp.not_informative or "")
    markdown, payload = comparison_report([("base", always_a), ("tuned", knows)], [("base", "tuned")])
    assert "not informative" in markdown and "+75.0%" not in markdown
    assert "| base | 25.0% | A 100% | no: base answers" in markdown
    assert payload["models"]["base"]["degenerate"] and payload["pairs"]["tuned_vs_base"]["informative"] is False
    # gold answers that are mostly one letter do not make a model that follows them degenerate
    mostly_a = _mcq("AAAAAAAAAB")
    follows = evaluate_loglikelihood(mostly_a, Scripted(gold={loglik_prompt(q): q.answer for q in mostly_a}))
    assert follows.degenerate() is None


def test_saved_results_carry_the_distribution(tmp_path) -> None:
    qs = _mcq("ABCD")
    res = evaluate_loglikelihood(qs, Scripted("B"), model_name="b")
    path = res.save(tmp_path / "r.json")
    import json

    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["predictions"] == {"B": 1.0} and raw["degenerate"].startswith("b answers")
    assert EvalResults.load(path).degenerate() == res.degenerate()
