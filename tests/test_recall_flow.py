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
    assert (p.top_k, p.max_similarity, p.decontam_n, p.mix_ratio, p.backend) == (50, 0.99, 13, 0.25, "ngram-hash")
    assert p.threshold == 0.3 and EvalDrivenRecallParams(backend="sentence-transformers").threshold == 0.75
    with pytest.raises(ValueError, match="below similarity_threshold"):
        EvalDrivenRecallParams(similarity_threshold=0.9, max_similarity=0.8)


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
