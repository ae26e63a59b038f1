"""Flow ``eval-driven-recall`` on the real Prefect engine: defaults on the sample data, then a re-run that embeds
nothing again, and a killed run (a lost shard) that re-embeds only that shard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.eval_driven_recall import EvalDrivenRecallParams, eval_driven_recall
from flows.registry import load_flow
from medtune_core.dataio import DatasetReader, Manifest
from tests.flow_states import task_states


def test_registered_with_one_parameter_model() -> None:
    flow_obj, params_model = load_flow("eval-driven-recall")
    assert flow_obj.name == "eval-driven-recall" and params_model is EvalDrivenRecallParams
    p = EvalDrivenRecallParams()
    assert (p.top_k, p.decontam_n, p.mix_ratio, p.backend, p.max_questions_per_row) == (50, 13, 0.25, "ngram-hash", 10)
    # thresholds and guards are calibrated per backend (the registry's class attributes), overridable
    assert (p.threshold, p.guard) == (0.3, 0.85)
    st = EvalDrivenRecallParams(backend="sentence-transformers")
    assert (st.threshold, st.guard) == (0.75, 0.95)
    assert EvalDrivenRecallParams(max_similarity=0.97).recall_config().max_similarity == 0.97
    with pytest.raises(ValueError, match="below similarity_threshold"):
        EvalDrivenRecallParams(similarity_threshold=0.9, max_similarity=0.8)


def test_backend_choices_come_from_the_registry() -> None:
    from medtune_core.recall import BACKENDS

    schema = EvalDrivenRecallParams.model_json_schema()["properties"]["backend"]
    assert sorted(schema["enum"]) == sorted(BACKENDS)
    with pytest.raises(ValueError, match="backend"):
        EvalDrivenRecallParams(backend="word2vec")


def test_empty_pool_says_empty_and_leaves_nothing(prefect_harness, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    out = tmp_path / "out"
    state = eval_driven_recall(params=EvalDrivenRecallParams(output_dir=out, pool_files=[empty]), return_state=True)
    assert state.is_failed() and "empty" in state.message
    leftovers = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert leftovers == []
    states = task_states(state.state_details.flow_run_id)
    assert states["recall-split-pool"] == ["Failed"] and "recall-embed-eval-set" not in states


def test_missing_benchmark_file_fails_at_once(prefect_harness, tmp_path: Path) -> None:
    from medtune_core.errors import MedtuneError
    from medtune_core.recall import load_benchmark

    with pytest.raises(ValueError, match=r"nowhere\.csv"):
        EvalDrivenRecallParams(output_dir=tmp_path / "out", benchmark_files=[tmp_path / "nowhere.csv"])
    # below the flow's parameter check, the core raises a user error (never retried as if it were the network)
    with pytest.raises(MedtuneError, match=r"nowhere\.csv: no such file"):
        load_benchmark([tmp_path / "nowhere.csv"])


def test_bad_benchmark_csv_is_not_retried(prefect_harness, tmp_path: Path) -> None:
    bad = tmp_path / "anatomy.csv"
    bad.write_text("id,question,A,B,C,D,answer\n0,q,a,b,c,d,E\n", encoding="utf-8")
    state = eval_driven_recall(
        params=EvalDrivenRecallParams(output_dir=tmp_path / "out", benchmark_files=[bad]), return_state=True
    )
    assert state.is_failed() and "anatomy.csv:2" in state.message
    assert task_states(state.state_details.flow_run_id)["recall-embed-eval-set"] == ["Failed"]  # one try


def test_sample_data_then_cached_then_lost_shard(prefect_harness, tmp_path: Path) -> None:
    params = EvalDrivenRecallParams(output_dir=tmp_path / "out", shard_size=100)
    state = eval_driven_recall(params=params, return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    train, control = Path(out["train"]), Path(out["control"])
    rows = Manifest.load(train).rows
    assert rows > 0 and Manifest.load(control).rows == rows
    assert sum(1 for _ in DatasetReader(train, "sharegpt")) == rows
    summary = json.loads((train.parent / "recall_stats.json").read_text(encoding="utf-8"))
    assert summary["subjects"][-1]["subject"] == "ALL" and summary["subjects"][-1]["questions"] == 80
    assert "most-recalled rows" in Path(out["report"]).read_text(encoding="utf-8")
    sources = Manifest.load(train).extra["sources"]
    assert {Path(s["path"]).name for s in sources} == {"medical_pool_en.jsonl", "medical_pool_zh.jsonl"}
    assert Manifest.load(out["recalled"]).extra["sources"]  # the benchmark files the recall was made for
    assert Path(out["histogram"]).read_bytes()[:4] == b"\x89PNG"
    states = task_states(state.state_details.flow_run_id)
    shards = states["recall-embed-pool-shard"]
    assert len(shards) == 4 and set(shards) == {"Completed"}
    first = {k: Path(v).read_bytes() for k, v in out.items() if Path(v).is_file()}

    again = eval_driven_recall(params=params, return_state=True)
    assert again.is_completed(), again.message
    states = task_states(again.state_details.flow_run_id)
    assert set(states["recall-embed-pool-shard"]) == {"Cached"} and len(states["recall-embed-pool-shard"]) == 4
    assert set(states["recall-embed-eval-set"]) == {"Cached"}
    assert {k: Path(v).read_bytes() for k, v in again.result().items() if Path(v).is_file()} == first

    # a run killed half way: one shard's vectors are gone; only that shard is embedded again, same outputs
    (tmp_path / "out" / "pool_vectors" / "shard-00002.npy").unlink()
    third = eval_driven_recall(params=params, return_state=True)
    assert third.is_completed(), third.message
    shard_states = task_states(third.state_details.flow_run_id)["recall-embed-pool-shard"]
    assert shard_states.count("Completed") == 1 and shard_states.count("Cached") == 4  # 3 hits + 1 stale hit
    assert Path(third.result()["train"]).read_bytes() == first["train"]

    # shards embedded three at a time (submitted to the task runner): the same vectors, the same training set
    parallel = EvalDrivenRecallParams(output_dir=tmp_path / "parallel", shard_size=100, parallel_shards=3)
    fourth = eval_driven_recall(params=parallel, return_state=True)
    assert fourth.is_completed(), fourth.message
    assert task_states(fourth.state_details.flow_run_id)["recall-embed-pool-shard"] == ["Completed"] * 4
    assert Path(fourth.result()["train"]).read_bytes() == first["train"]
    for n in range(4):
        name = f"shard-{n:05d}.npy"
        assert (tmp_path / "parallel" / "pool_vectors" / name).read_bytes() == (
            tmp_path / "out" / "pool_vectors" / name
        ).read_bytes()


def test_api_embeddings_are_cached_per_text_under_medtune_home() -> None:
    from medtune_core.settings import get_settings

    cfg = EvalDrivenRecallParams(backend="openai-api", model="text-embedding-3-small").embedding()
    assert cfg.options["cache_path"] == str(get_settings().cache_dir / "embeddings.sqlite")
    assert "cache_path" not in EvalDrivenRecallParams().embedding().options  # local backends need none
