"""Flow ``rlhf-training`` on the tiny model under the Prefect test harness: a changed input always changes the
model (data row, hyper-parameter), an identical re-run is all Cached, a deleted ``merged/`` heals, ``force``
retrains from a stage on; parameters (recipes, stage overrides, QLoRA on CPU)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from flows.params import build_params
from flows.registry import load_flow
from flows.rlhf_training import RECIPES, RLHFTrainingParams, StageSpec
from medtune_core.errors import MedtuneError
from medtune_core.training import STAGES
from tasks.safety import SafetyEvalOptions
from tests.flow_states import task_states

QUICK = {"max_steps": 2, "batch_size": 2, "max_length": 192, "save_steps": 1000, "report_to": [], "max_samples": 8}


def test_recipes_validate() -> None:
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    assert names == ["pt_sft_dpo", "sft_dpo", "sft_grpo_seed3", "sft_orpo", "sft_rm_rloo"]
    for name in names:
        params = RLHFTrainingParams(recipe=name, output_dir=Path("out/x"))
        assert all(f.is_file() for s in params.stages for f in s.train_files), name
    assert [s.stage for s in RLHFTrainingParams(recipe="sft_rm_rloo").stages] == ["sft", "rm", "rloo"]
    with pytest.raises((MedtuneError, ValueError), match="reference model"):
        RLHFTrainingParams(stages=[StageSpec(stage="sft"), StageSpec(stage="dpo", settings={"chain": "stack"})])
    # the stage choices are the registry's
    assert set(StageSpec.model_json_schema()["properties"]["stage"]["enum"]) == set(STAGES)


def test_stage_overrides_from_the_command_line() -> None:
    params = build_params(
        RLHFTrainingParams,
        RECIPES / "sft_rm_rloo.yaml",
        ["sft.max_steps=2", "stage.3.beta=0.3", "rloo.num_generations=2", "force=rm"],
    )
    assert params.stages[0].settings["max_steps"] == 2 and params.stages[0].settings["learning_rate"] == 2e-4
    assert params.stages[2].settings["beta"] == 0.3 and params.stages[2].settings["num_generations"] == 2
    assert "max_steps" not in params.stages[1].settings and params.first_forced() == 1
    by_recipe = build_params(RLHFTrainingParams, None, ["recipe=sft_dpo", "dpo.beta=0.5"])
    assert [s.stage for s in by_recipe.stages] == ["sft", "dpo"] and by_recipe.stages[1].settings["beta"] == 0.5
    with pytest.raises(MedtuneError, match=r"stage\.4: stages are numbered 1\.\.3"):
        build_params(RLHFTrainingParams, RECIPES / "sft_rm_rloo.yaml", ["stage.4.beta=0.3"])
    with pytest.raises(MedtuneError, match="no dpo stage here"):
        build_params(RLHFTrainingParams, RECIPES / "sft_rm_rloo.yaml", ["dpo.beta=0.3"])
    with pytest.raises(MedtuneError, match="force: 'kto' names no stage"):
        build_params(RLHFTrainingParams, RECIPES / "sft_rm_rloo.yaml", ["force=kto"])


def test_qlora_is_refused_at_validation_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():  # the check is about machines without CUDA; with CUDA, bitsandbytes decides
        return
    with pytest.raises(ValidationError, match="qlora needs a CUDA GPU"):
        RLHFTrainingParams(adapter="qlora")
    assert RLHFTrainingParams(adapter="qlora", device="cuda-pool").adapter.value == "qlora"


def _weights(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


def _run(flow_obj: Any, params: RLHFTrainingParams) -> tuple[dict[str, str], dict[str, list[str]]]:
    state = flow_obj(params, return_state=True)
    assert state.is_completed(), state.message
    return state.result(), task_states(state.state_details.flow_run_id, expected=2)


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def _latest_artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=1)
    return str(artifact.data)


def test_a_changed_input_always_changes_the_model(prefect_harness: None, tmp_path: Path) -> None:
    flow_obj, params_model = load_flow("rlhf-training")
    assert params_model is RLHFTrainingParams
    default = RLHFTrainingParams(output_dir=tmp_path / "default")
    assert [s.stage for s in default.stages] == ["sft", "dpo"]
    copies = {}  # the stages read copies, so the test can edit one in place
    for s in default.stages:
        copies[s.stage] = [tmp_path / f"{s.stage}-{f.name}" for f in s.train_files]
        for src, dst in zip(s.train_files, copies[s.stage], strict=True):
            dst.write_bytes(src.read_bytes())

    def params(sft_lr: float = 1e-3, safety_eval: bool = False, **extra: Any) -> RLHFTrainingParams:
        lrs = {"sft": sft_lr, "dpo": 1e-3}
        return RLHFTrainingParams(
            base_model="tiny",
            output_dir=tmp_path / "run",
            device="cpu",
            stages=[
                StageSpec(stage=s.stage, train_files=copies[s.stage], settings={**QUICK, "learning_rate": lrs[s.stage]})
                for s in default.stages
            ],
            safety=SafetyEvalOptions(limit=2, max_new_tokens=8),
            safety_eval=safety_eval,
            **extra,
        )

    out, states = _run(flow_obj, params(safety_eval=True))
    assert set(out) == {"1-sft", "2-dpo", "model", "safety-1-sft", "safety-2-dpo"}
    assert states["train-stage"] == ["Completed", "Completed"]
    table = Path(out["safety-2-dpo"]).read_text(encoding="utf-8")
    assert "1-sft" in table and "2-dpo" in table  # the DPO table compares against the SFT stage
    assert "data:image/png;base64," in _latest_artifact("rlhf-training-loss-1-sft")  # the loss curve shows in the UI
    model = tmp_path / "run" / "2-dpo" / "merged"
    assert Path(out["model"]) == model and (model / "chat_template.jinja").is_file()
    sft_dir, dpo_dir = tmp_path / "run" / "1-sft", tmp_path / "run" / "2-dpo"
    first = _weights(model)

    # identical re-run: every stage Cached, nothing rewritten
    stamps = {p: _mtime(p / "metrics.json") for p in (sft_dir, dpo_dir)}
    again, states = _run(flow_obj, params(safety_eval=True))
    assert again == out and states["train-stage"] == ["Cached", "Cached"]
    assert {p: _mtime(p / "metrics.json") for p in stamps} == stamps

    # one SFT row edited in place: SFT, its merge and DPO train again, and the final weights differ
    sft_file = copies["sft"][0]
    lines = sft_file.read_text(encoding="utf-8").splitlines(keepends=True)
    sft_file.write_text(lines[0].replace("。", "！", 1) + "".join(lines[1:]), encoding="utf-8")
    assert sft_file.read_text(encoding="utf-8") != "".join(lines)
    merge_before = (sft_dir / "merged" / "medtune_merge.json").read_text()
    _, states = _run(flow_obj, params())
    assert states["train-stage"] == ["Completed", "Completed"]
    assert (sft_dir / "superseded").is_dir() and (dpo_dir / "superseded").is_dir()
    assert (sft_dir / "merged" / "medtune_merge.json").read_text() != merge_before
    second = _weights(model)
    assert second != first

    # one hyper-parameter changed: the same
    _, states = _run(flow_obj, params(sft_lr=5e-4))
    assert states["train-stage"] == ["Completed", "Completed"]
    third = _weights(model)
    assert third not in (first, second)

    # a deleted merged/ heals: the cached SFT result is checked, SFT is not retrained, its merge is rebuilt
    import shutil

    sft_stamp, dpo_stamp = _mtime(sft_dir / "metrics.json"), _mtime(dpo_dir / "metrics.json")
    shutil.rmtree(sft_dir / "merged")
    healed, _ = _run(flow_obj, params(sft_lr=5e-4))
    assert (sft_dir / "merged" / "config.json").is_file() and Path(healed["model"]) == model
    assert _mtime(sft_dir / "metrics.json") == sft_stamp, "an intact adapter is not retrained"
    assert _mtime(dpo_dir / "metrics.json") == dpo_stamp and _weights(model) == third

    # force=dpo retrains DPO (and only it)
    _, states = _run(flow_obj, params(sft_lr=5e-4, force="dpo"))
    assert states["train-stage"] == ["Cached", "Completed"]
    assert _mtime(sft_dir / "metrics.json") == sft_stamp and _mtime(dpo_dir / "metrics.json") != dpo_stamp
    metrics = (dpo_dir / "metrics.json").read_text()
    assert '"device": "cpu (float32)"' in metrics

    # a whole stage folder deleted: the stage comes back (retrained), not a cached result naming nothing
    shutil.rmtree(dpo_dir)
    back, _ = _run(flow_obj, params(sft_lr=5e-4))
    assert (dpo_dir / "merged" / "config.json").is_file() and Path(back["model"]) == model
    assert _mtime(sft_dir / "metrics.json") == sft_stamp
