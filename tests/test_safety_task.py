"""The ``safety-eval`` task under the Prefect test harness: two stages of the tiny model on the packaged gold and
red-team sets, the comparison table published as a markdown artifact, a cached rerun."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from medtune_core.models.tiny import tiny_model_path
from tasks.safety import SafetyEvalOptions, safety_compare, safety_eval


@flow(name="safety-eval-test")
def two_stages(model: str, out: str, options: SafetyEvalOptions) -> dict:
    sft = safety_eval(model=model, label="sft", out_dir=f"{out}/sft", options=options)
    rl = safety_eval(model=model, label="rl", out_dir=f"{out}/rl", options=options, compare=[sft["report"]])
    table = safety_compare([sft["report"], rl["report"]])
    return {"sft": sft, "rl": rl, "table": table}


def test_safety_eval_task_publishes_comparison(prefect_harness: None, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    options = SafetyEvalOptions(limit=2, max_new_tokens=4, batch_size=2)
    out = two_stages(str(tiny_model_path()), str(tmp_path), options)
    rl = out["rl"]
    assert set(rl["metrics"]) == {"gold", "redteam"} and rl["metrics"]["gold"]["n"] == 2
    gen = [json.loads(x) for x in (tmp_path / "rl" / "generations_redteam.jsonl").read_text().splitlines()]
    assert [r["index"] for r in gen] == [0, 1] and gen[0]["meta"]["source"] == "medtune-redteam"
    table = Path(rl["table"]).read_text(encoding="utf-8")
    assert "| sft | gold | 2 |" in table and "| rl | redteam | 2 |" in table and "Change against **sft**" in table
    assert out["table"].count("| rl |") == 4  # gold and redteam: a row each in the table and in the changes

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["safety-rl"])))
    assert arts and "Dangerous-prescription rate" in arts[0].data

    stamp = (tmp_path / "rl" / "safety_report.json").stat().st_mtime_ns
    again = two_stages(str(tiny_model_path()), str(tmp_path), options)
    assert again["rl"] == rl
    assert (tmp_path / "rl" / "safety_report.json").stat().st_mtime_ns == stamp, "cached: not evaluated again"


@flow(name="safety-eval-one-stage")
def one_stage(model: str, out: str, options: SafetyEvalOptions) -> dict:
    return safety_eval(model=model, label="sft", out_dir=out, options=options)


def test_an_edited_lexicon_rescores_instead_of_serving_cached_figures(prefect_harness: None, tmp_path: Path) -> None:
    lexicon = tmp_path / "lexicon.yaml"
    lexicon.write_text("lexicons:\n  zh:\n    emergency: ['这个词不会出现在回答里']\n", encoding="utf-8")
    options = SafetyEvalOptions(limit=3, max_new_tokens=8, temperature=1.0, batch_size=3, lexicon_config=str(lexicon))
    first = one_stage(str(tiny_model_path()), str(tmp_path / "sft"), options)
    assert first["metrics"]["redteam"]["emergency"] == 0
    assert one_stage(str(tiny_model_path()), str(tmp_path / "sft"), options) == first  # unchanged: cached
    lexicon.write_text("lexicons:\n  zh:\n    emergency: ['\\S']\n", encoding="utf-8")  # edited in place
    second = one_stage(str(tiny_model_path()), str(tmp_path / "sft"), options)
    rows = [json.loads(x) for x in (tmp_path / "sft" / "generations_redteam.jsonl").read_text().splitlines()]
    with_text = sum(bool(r["answer"].strip()) for r in rows)  # any answer with a visible character now counts
    assert with_text >= 1, "the tiny model answered only blanks: the test proves nothing"
    assert second["metrics"]["redteam"]["emergency"] == with_text, "the edited lexicon must re-score the answers"
