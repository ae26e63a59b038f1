"""Eval-driven recall's last stage: the ``eval-driven-recall`` flow with ``train_and_evaluate`` (SFT of the tiny
model on the recalled and the control set, base / control / recalled evaluated on a benchmark subset,
the comparison published), and ``medtune recall compare`` / ``evaluate`` on crafted and real result files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.eval_driven_recall import SAMPLES, EvalDrivenRecallParams, eval_driven_recall
from medtune_core.recall.benchmark_eval import balanced_subset
from medtune_core.recall.evaluate import EvalResults, QuestionResult
from tasks.recall_eval import TrainEvalSettings

runner = CliRunner()


def test_flow_trains_control_and_recalled_and_compares_three_models(prefect_harness, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    settings = TrainEvalSettings(
        base_model="tiny",
        max_steps=2,
        batch_size=2,
        grad_accum=1,
        max_length=96,
        learning_rate=1e-3,
        max_eval_questions=8,
    )
    params = EvalDrivenRecallParams(
        output_dir=tmp_path / "out", shard_size=1000, train_and_evaluate=True, train_eval=settings
    )
    state = eval_driven_recall(params=params, return_state=True)
    assert state.is_completed(), state.message
    out = state.result()

    # both sets trained with identical settings; only the training file differs
    run_dir = tmp_path / "out" / "train_eval"
    configs = {
        label: json.loads((Path(out[f"model_{label}"]).parent / "stage_config.json").read_text())
        for label in ("control", "recalled")
    }
    assert Path(configs["recalled"]["train_files"][0]) == Path(out["train"])
    assert Path(configs["control"]["train_files"][0]) == Path(out["control"])
    same = {k: v for k, v in configs["control"].items() if k not in ("train_files", "output_dir")}
    assert same == {k: v for k, v in configs["recalled"].items() if k not in ("train_files", "output_dir")}
    assert same["max_steps"] == 2 and same["adapter"]["r"] == 16 and same["adapter"]["alpha"] == 32
    assert same["grad_accum"] == 1

    results = {label: EvalResults.load(out[f"eval_{label}"]) for label in ("base", "control", "recalled")}
    ids = [r.id for r in results["base"].results]
    assert len(ids) == 8 and all([r.id for r in res.results] == ids for res in results.values())
    assert len({r.subject for r in results["base"].results}) == 4  # the subset is balanced across subjects

    payload = json.loads(Path(out["comparison_json"]).read_text(encoding="utf-8"))
    assert list(payload["models"]) == ["base", "control", "recalled"]
    assert set(payload["pairs"]) == {"recalled_vs_control", "recalled_vs_base"}
    overall = payload["subjects"][-1]
    assert overall["subject"] == "ALL" and overall["n"] == 8
    for pair, other in (("recalled_vs_control", "control"), ("recalled_vs_base", "base")):
        comp = payload["pairs"][pair]
        assert comp["accuracy_a"] == pytest.approx(results[other].accuracy, abs=1e-4)
        assert comp["accuracy_b"] == pytest.approx(results["recalled"].accuracy, abs=1e-4)
        assert 0.0 <= comp["p_value"] <= 1.0 and overall[pair]["p_value"] == round(comp["p_value"], 6)
    markdown = Path(out["comparison"]).read_text(encoding="utf-8")
    assert "| subject | n | base | control | recalled | recalled − control (p) | recalled − base (p) |" in markdown
    assert "| ALL | 8 |" in markdown and "McNemar exact p" in markdown and "### Training" in markdown
    assert Path(out["comparison_chart"]).read_bytes()[:4] == b"\x89PNG"
    assert Path(out["comparison"]).parent == run_dir

    # a re-run trains and evaluates nothing again (train files keyed by content, models by their folders)
    stamps = {k: Path(v).stat().st_mtime_ns for k, v in out.items() if k.startswith("eval_")}
    stamps["metrics"] = (Path(out["model_recalled"]).parent / "metrics.json").stat().st_mtime_ns
    again = eval_driven_recall(params=params, return_state=True)
    assert again.is_completed() and again.result() == out
    assert {k: Path(v).stat().st_mtime_ns for k, v in out.items() if k.startswith("eval_")} == {
        k: v for k, v in stamps.items() if k != "metrics"
    }
    assert (Path(out["model_recalled"]).parent / "metrics.json").stat().st_mtime_ns == stamps["metrics"]

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["recall-comparison"])), limit=1
        )
    assert arts and "recalled − control (p)" in arts[0].data
    assert "![accuracy per subject](data:image/png;base64," in arts[0].data  # the chart shows in the UI


def test_train_and_evaluate_needs_the_control() -> None:
    with pytest.raises(ValueError, match="control must be true"):
        EvalDrivenRecallParams(train_and_evaluate=True, control=False)
    defaults = EvalDrivenRecallParams().train_eval
    assert defaults.base_model == "embedded:smollm2-135m-instruct"
    # batch 1 x 4 accumulated: the defaults' measured peak was 3.7 GB on CPU (batch 4: 10 GB)
    assert (defaults.batch_size, defaults.grad_accum) == (1, 4) and defaults.sft_values()["grad_accum"] == 4
    with pytest.raises(ValueError):
        TrainEvalSettings(method="guess")


def _results(path: Path, name: str, correct: list[bool]) -> Path:
    rows = [
        QuestionResult(f"q{i}", "anatomy" if i % 2 else "physiology", "A", "A" if c else "B", c)
        for i, c in enumerate(correct)
    ]
    EvalResults(name, "loglikelihood-letter", rows).save(path)
    return path


def test_cli_compare_prints_the_known_mcnemar_p_value(tmp_path: Path) -> None:
    # 20 questions: 6 both right, 4 both wrong, 1 only control right, 9 only recalled right.
    # McNemar exact: two-sided binomial of 1 in 10 at 0.5 = 2 * (C(10,0) + C(10,1)) / 2**10 = 22 / 1024.
    control = [True] * 6 + [False] * 4 + [True] + [False] * 9
    recalled = [True] * 6 + [False] * 4 + [False] + [True] * 9
    a = _results(tmp_path / "control.json", "control", control)
    b = _results(tmp_path / "recalled.json", "recalled", recalled)
    result = runner.invoke(
        app,
        ["recall", "compare", str(a), str(b), "--out", str(tmp_path / "cmp.md"), "--chart", str(tmp_path / "c.png")],
    )
    assert result.exit_code == 0, result.output
    assert "McNemar exact p = 0.02148" in result.output
    assert "(9 only recalled right, 1 only control right)" in result.output
    assert "| ALL | 20 | 35.0% | 75.0% | +40.0% | 0.02148 |" in result.output
    last = json.loads(result.output.strip().splitlines()[-1])
    assert last == {"p_value": pytest.approx(22 / 1024, abs=1e-6), "delta": 0.4, "n": 20}
    assert json.loads((tmp_path / "cmp.json").read_text())["b_only"] == 9
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"

    bad = runner.invoke(app, ["recall", "compare", str(a), str(tmp_path / "missing.json")])
    assert bad.exit_code == 1 and "missing.json" in bad.output


def test_cli_evaluate_tiny_model_on_a_subset(tmp_path: Path) -> None:
    out = tmp_path / "tiny.json"
    args = ["recall", "evaluate", "--model", "tiny", "--benchmark", str(SAMPLES / "benchmark"), "--limit", "4"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    res = EvalResults.load(out)
    assert len(res.results) == 4 and res.meta["of"] == 80 and res.method == "loglikelihood-letter"
    assert "| ALL | 4 |" in result.output
    bad = runner.invoke(app, [*args, "--method", "guess"])
    assert bad.exit_code == 2 and "method" in bad.output


def test_balanced_subset_round_robins_subjects() -> None:
    from medtune_core.formats import MultipleChoice

    qs = [
        MultipleChoice(question=f"q{i}", options={"A": "x", "B": "y"}, answer="A", subject=s, id=f"{s}{i}")
        for i, s in enumerate("aaaabbc")
    ]
    assert [q.id for q in balanced_subset(qs, 4)] == ["a0", "a1", "b4", "c6"]
    assert balanced_subset(qs, None) == qs and balanced_subset(qs, 100) == qs
