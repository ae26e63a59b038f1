"""Flow ``rlhf-training``: PT / SFT / RM / DPO / ORPO / KTO / GRPO / RLOO stages chained on one base model.

DAG: resolve the base model -> for each stage: cached ``train-stage`` task (here, or on the CUDA pool through
the ``train-stage/cuda`` deployment) -> merge its adapter -> next stage on the merged model (an ``rm`` stage
hands its merged reward model to later ``grpo``/``rloo`` stages instead) -> metrics table artifact.

With no parameter but ``output_dir`` it runs SFT -> DPO for a few steps on the embedded SmolLM2 with the
project's sample data (no key, no GPU, no download). ``recipe`` loads a YAML recipe from
``medtune_core/recipes`` (PT->SFT->DPO, SFT->DPO, SFT->ORPO, SFT->RM->RLOO, seed 3's SFT->GRPO).
TRL 1.x has no PPO: the seeds' PPO-with-a-reward-model is ``rloo`` with ``reward_model`` among its rewards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow
from pydantic import Field, model_validator

from medtune_core.params import OutputDir, StrictParams
from medtune_core.training import AdapterType, stage_config
from medtune_core.training.pipeline import validate_chain
from tasks.artifacts import publish_table
from tasks.safety import SafetyEvalOptions, safety_compare, safety_eval
from tasks.training import resolve_base, run_stage_here, train_stage_task, with_input_files

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "medtune_core" / "recipes"
StageName = Literal["pt", "sft", "rm", "dpo", "orpo", "kto", "grpo", "rloo"]


def _sample(name: str) -> Path:
    return REPO / "medtune_core" / "samples" / name


class StageSpec(StrictParams):
    """One stage: its name, data files and settings (any field of the stage's config)."""

    stage: StageName
    train_files: list[Path] = Field(default_factory=list, description="any supported format")
    settings: dict[str, Any] = Field(default_factory=dict, description="e.g. max_steps, learning_rate, beta")


def _default_stages() -> list[StageSpec]:
    quick = {"max_steps": 3, "batch_size": 2, "max_length": 256, "save_steps": 1000}
    return [
        StageSpec(
            stage="sft", train_files=[_sample("sft_sharegpt_zh.jsonl")], settings={**quick, "learning_rate": 2e-4}
        ),
        StageSpec(stage="dpo", train_files=[_sample("preference_zh.jsonl")], settings={**quick, "learning_rate": 5e-5}),
    ]


class RLHFTrainingParams(StrictParams):
    """Base model, stages in order, adapter, output folder."""

    base_model: str = Field("embedded:smollm2-135m-instruct", description="embedded:NAME, a folder or a hub id")
    stages: list[StageSpec] = Field(default_factory=_default_stages, description="e.g. sft then dpo")
    recipe: str | None = Field(None, description="a YAML recipe name in medtune_core/recipes (e.g. sft_dpo) or path")
    adapter: AdapterType = Field(AdapterType.LORA, description="lora | qlora (CUDA) | dora | full")
    output_dir: OutputDir = Field(Path("out/rlhf-training"))
    cuda_deployment: str | None = Field(
        None, description="run stages on the CUDA pool through this deployment (e.g. train-stage/cuda)"
    )
    safety_eval: bool = Field(True, description="seed 3 safety metrics on the gold and red-team sets after each stage")
    safety: SafetyEvalOptions = Field(
        default_factory=lambda: SafetyEvalOptions(limit=8, max_new_tokens=96),
        description="Safety evaluation settings (default: a quick look, 8 prompts a set, 96 new tokens)",
    )

    @model_validator(mode="after")
    def _apply_recipe(self) -> RLHFTrainingParams:
        if self.recipe:
            path = Path(self.recipe)
            if not path.is_file():
                path = RECIPES / f"{self.recipe.removesuffix('.yaml')}.yaml"
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            self.base_model = data.get("base_model", self.base_model)
            self.adapter = AdapterType(data.get("adapter", self.adapter))
            self.stages = [StageSpec.model_validate(s) for s in data["stages"]]
            self.recipe = None
        for s in self.stages:
            s.train_files = [f if f.is_absolute() or f.exists() else REPO / f for f in s.train_files]
        validate_chain(self.stage_configs("placeholder"))  # reject impossible chains before anything runs
        return self

    def stage_configs(self, model: str) -> list[Any]:
        out = []
        for i, s in enumerate(self.stages):
            values: dict[str, Any] = {"adapter": {"type": self.adapter.value}, **s.settings}
            values.update(model=model, train_files=s.train_files, output_dir=self.output_dir / f"{i + 1}-{s.stage}")
            out.append(stage_config(s.stage, **values))
        return out


@flow(name="rlhf-training")
def rlhf_training(params: RLHFTrainingParams) -> dict[str, str]:
    """Train the stages in order; returns the output folder of each stage and the final model."""
    base = resolve_base(params.base_model)
    outputs: dict[str, str] = {}
    rows = []
    reward_model: str | None = None
    safety_reports: list[str] = []
    for i, cfg in enumerate(params.stage_configs(str(base))):
        config = cfg.model_dump(mode="json", exclude_unset=False)
        if reward_model and "reward_model" in config and not config["reward_model"]:
            config["reward_model"] = reward_model
        result = train_stage_task(cfg.stage, with_input_files(config), base, True, params.cuda_deployment)
        key = f"{i + 1}-{cfg.stage}"
        outputs[key] = result["output_dir"]
        if cfg.stage == "rm":
            reward_model = result["merged_dir"]
        else:
            base = Path(result["merged_dir"])
            outputs["model"] = str(base)
        if params.safety_eval and cfg.stage != "rm":
            report = safety_eval(
                Path(result["merged_dir"]),
                key,
                str(params.output_dir / "safety" / key),
                None,
                params.safety,
                list(safety_reports),
            )
            safety_reports.append(report["report"])
            outputs[f"safety-{key}"] = report["table"]
        m = result.get("metrics", {})
        rows.append(
            {
                "stage": key,
                "steps": m.get("steps"),
                "loss first": m.get("loss_first"),
                "loss last": m.get("loss_last"),
                "eval loss": m.get("eval_loss"),
                "tokens/s": m.get("effective_tokens_per_s"),
                "loss curve": result.get("loss_curve"),
                "model": result.get("merged_dir"),
            }
        )
    publish_table("rlhf-training-stages", rows, "Per-stage metrics, loss curves and models")
    if len(safety_reports) > 1:
        safety_compare(safety_reports, "rlhf-training-safety", "Safety metrics after each stage")
    return outputs


class TrainStageParams(StrictParams):
    """One stage, as sent by ``rlhf-training`` to the CUDA pool."""

    stage: StageName
    config: dict[str, Any]
    merge: bool = True


@flow(name="train-stage")
def train_stage(params: TrainStageParams) -> dict[str, str]:
    """Run one training stage in this worker (the ``train-stage/cuda`` deployment)."""
    out = run_stage_here(params.stage, params.config, params.merge)
    return {k: str(v) for k, v in out.items() if k in ("output_dir", "adapter_dir", "model_dir", "merged_dir")}
