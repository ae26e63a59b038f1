"""Flow ``rlhf-training`` on the tiny model under the Prefect test harness: chain, artifacts, per-stage cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.registry import load_flow
from flows.rlhf_training import RECIPES, RLHFTrainingParams, StageSpec
from medtune_core.errors import MedtuneError
from tasks.safety import SafetyEvalOptions

QUICK = {"max_steps": 2, "batch_size": 2, "max_length": 96, "save_steps": 1000, "report_to": []}


def test_recipes_validate() -> None:
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    assert names == ["pt_sft_dpo", "sft_dpo", "sft_grpo_seed3", "sft_orpo", "sft_rm_rloo"]
    for name in names:
        params = RLHFTrainingParams(recipe=name, output_dir=Path("out/x"))
        assert all(f.is_file() for s in params.stages for f in s.train_files), name
    assert [s.stage for s in RLHFTrainingParams(recipe="sft_rm_rloo").stages] == ["sft", "rm", "rloo"]
    with pytest.raises((MedtuneError, ValueError), match="reference model"):
        RLHFTrainingParams(stages=[StageSpec(stage="sft"), StageSpec(stage="dpo", settings={"chain": "stack"})])


def test_rlhf_training_flow_sft_dpo_tiny_and_cached_rerun(prefect_harness: None, tmp_path: Path) -> None:
    flow_obj, params_model = load_flow("rlhf-training")
    assert params_model is RLHFTrainingParams
    default = RLHFTrainingParams(output_dir=tmp_path / "default")
    assert [s.stage for s in default.stages] == ["sft", "dpo"]
    copies = {}  # the stages read copies, so the test can edit one in place
    for s in default.stages:
        copies[s.stage] = [tmp_path / f"{s.stage}-{f.name}" for f in s.train_files]
        for src, dst in zip(s.train_files, copies[s.stage], strict=True):
            dst.write_bytes(src.read_bytes())
    params = RLHFTrainingParams(
        base_model="tiny",
        output_dir=tmp_path / "run",
        stages=[
            StageSpec(stage=s.stage, train_files=copies[s.stage], settings={**QUICK, "learning_rate": 1e-3})
            for s in default.stages
        ],
        safety=SafetyEvalOptions(limit=2, max_new_tokens=8),
    )
    out = flow_obj(params)
    assert set(out) == {"1-sft", "2-dpo", "model", "safety-1-sft", "safety-2-dpo"}
    table = Path(out["safety-2-dpo"]).read_text(encoding="utf-8")
    assert "1-sft" in table and "2-dpo" in table  # the DPO table compares against the SFT stage
    assert Path(out["model"]) == tmp_path / "run" / "2-dpo" / "merged"
    assert (Path(out["model"]) / "chat_template.jinja").is_file()
    metrics = Path(out["2-dpo"]) / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    again = flow_obj(params)
    assert again == out
    assert metrics.stat().st_mtime_ns == stamp, "finished stages come back from the cache, not retrained"

    # a training file edited in place (same name) is new data: that stage trains again, the one before does not
    sft_metrics = Path(out["1-sft"]) / "metrics.json"
    sft_stamp = sft_metrics.stat().st_mtime_ns
    dpo_file = copies["dpo"][0]
    dpo_file.write_text("".join(dpo_file.read_text(encoding="utf-8").splitlines(keepends=True)[:-1]), encoding="utf-8")
    third = flow_obj(params)
    assert third["model"] == out["model"]
    assert sft_metrics.stat().st_mtime_ns == sft_stamp
    assert metrics.stat().st_mtime_ns != stamp, "an edited training file must not bring back the old stage"
