"""Every shipped recipe runs through ``medtune run rlhf-training --config RECIPE`` with tiny overrides (the tiny
model, one step a stage), RM -> RLOO included; RLOO and GRPO use an existing reward model by path; a stage trains
with its own chat template file. One recipe runs as a user runs it (a subprocess); the others go through the same
recipe + ``--set`` parsing in this process, under the Prefect test harness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.params import build_params
from flows.registry import load_flow
from flows.rlhf_training import RECIPES, RLHFTrainingParams, StageSpec
from tests.cli_process import run_medtune

REPO = Path(__file__).resolve().parent.parent
TINY_STAGE = {
    "max_steps": 1,
    "batch_size": 2,
    "grad_accum": 1,
    "max_length": 1024,
    "max_samples": 8,
    "save_steps": 1000,
    "report_to": "[]",
}
TINY_RL = {"num_generations": 2, "max_completion_length": 8, "max_length": 512}


def tiny_overrides(recipe: Path, out: Path) -> list[str]:
    """``--set`` pairs that shrink every stage of ``recipe`` to one tiny step."""
    stages = yaml.safe_load(recipe.read_text(encoding="utf-8"))["stages"]
    pairs = ["base_model=tiny", f"output_dir={out}", "safety_eval=false", "device=cpu"]
    for n, stage in enumerate(stages, 1):
        values: dict[str, Any] = dict(TINY_STAGE)
        if stage["stage"] == "pt":
            values["block_size"] = 64
        if stage["stage"] in ("grpo", "rloo"):
            values.update(TINY_RL)
        pairs += [f"stage.{n}.{k}={v}" for k, v in values.items()]
    return pairs


def _no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "DEEPSEEK_API_KEY"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("name", ["pt_sft_dpo", "sft_dpo", "sft_orpo", "sft_grpo_seed3"])
def test_shipped_recipe_runs_tiny(
    name: str, prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_keys(monkeypatch)
    recipe = RECIPES / f"{name}.yaml"
    extra = ["grpo.fail_on_no_signal=false"] if name == "sft_grpo_seed3" else []
    params = build_params(RLHFTrainingParams, recipe, tiny_overrides(recipe, tmp_path / "run") + extra)
    flow_obj, _ = load_flow("rlhf-training")
    state = flow_obj(params, return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    stages = [s.stage for s in params.stages]
    assert [k for k in out if k[0].isdigit()] == [f"{i}-{s}" for i, s in enumerate(stages, 1)]
    assert (Path(out["model"]) / "config.json").is_file()
    for key in (k for k in out if k[0].isdigit()):
        metrics = json.loads((Path(out[key]) / "metrics.json").read_text())
        assert metrics["steps"] == 1 and metrics["device"] == "cpu (float32)"
    if name == "sft_grpo_seed3":  # no key: the teacher is left out, loudly, and the rules carry on
        grpo = json.loads((Path(out["2-grpo"]) / "metrics.json").read_text())
        assert [r["name"] for r in grpo["rewards_left_out"]] == ["teacher"]
        assert "no API key" in grpo["rewards_left_out"][0]["reason"]
        assert set(grpo["reward_components"]) == {"rules"}
        warning = _artifact(state.state_details.flow_run_id, "rlhf-training-warnings")
        assert "2-grpo: reward teacher (weight 0.4) LEFT OUT: no API key" in warning


def _artifact(flow_run_id: Any, key: str) -> str:
    """The latest data of a flow run's artifact ``key`` (artifacts reach the server asynchronously: polled)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            )
            if found or time.monotonic() > deadline:
                return str(found[-1].data) if found else ""
            time.sleep(0.5)


def test_sft_rm_rloo_through_medtune_run_then_rloo_with_that_reward_model_by_path(
    prefect_harness: None, tmp_path: Path
) -> None:
    recipe = RECIPES / "sft_rm_rloo.yaml"
    out = tmp_path / "run"
    args = ["run", "rlhf-training", "--config", str(recipe)]
    for pair in tiny_overrides(recipe, out):
        args += ["--set", pair]
    result = run_medtune(*args, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["state"] == "COMPLETED"
    outputs = summary["outputs"]
    assert [k for k in outputs if k[0].isdigit()] == ["1-sft", "2-rm", "3-rloo"]
    rloo_config = json.loads((out / "3-rloo" / "stage_config.json").read_text())
    assert rloo_config["reward_model"] == str(out / "2-rm" / "merged")
    rloo = json.loads((out / "3-rloo" / "metrics.json").read_text())
    assert set(rloo["reward_components"]) == {"reward_model", "rules"}

    # RLOO and GRPO with the trained reward model by path (no rm stage in this run), on stages with their own
    # chat template file
    template = out / "1-sft" / "merged" / "chat_template.jinja"
    rm_path = str(out / "2-rm" / "merged")
    settings = {
        **{k: v for k, v in TINY_STAGE.items() if k != "report_to"},
        **TINY_RL,
        "report_to": [],
        "chat_template": str(template),
        "rewards": [{"name": "reward_model", "options": {"path": rm_path}}],
    }
    prompts = [REPO / "medtune_core" / "samples" / "sft_sharegpt_zh.jsonl"]
    params = RLHFTrainingParams(
        base_model=str(out / "1-sft" / "merged"),
        output_dir=tmp_path / "by-path",
        device="cpu",
        safety_eval=False,
        stages=[StageSpec(stage=s, train_files=prompts, settings=settings) for s in ("rloo", "grpo")],
    )
    flow_obj, _ = load_flow("rlhf-training")
    state = flow_obj(params, return_state=True)
    assert state.is_completed(), state.message
    for key in ("1-rloo", "2-grpo"):
        metrics = json.loads((tmp_path / "by-path" / key / "metrics.json").read_text())
        assert metrics["reward_components"]["reward_model"]["samples"] > 0, key
        assert (tmp_path / "by-path" / key / "merged" / "config.json").is_file()
    assert (tmp_path / "by-path" / "2-grpo" / "merged" / "chat_template.jinja").read_text() == template.read_text()
