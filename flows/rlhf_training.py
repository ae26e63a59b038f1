"""Flow ``rlhf-training``: PT / SFT / RM / DPO / ORPO / KTO / GRPO / RLOO stages chained on one base model.

DAG: resolve the base model -> for each stage: cached ``train-stage`` task (here, or on the CUDA pool through
the ``train-stage/cuda`` deployment) -> merge its adapter -> next stage on the merged model (an ``rm`` stage
hands its merged reward model to later ``grpo``/``rloo`` stages instead) -> metrics table artifact.

With no parameter but ``output_dir`` it runs SFT -> DPO for a few steps on the embedded SmolLM2 with the
project's sample data (no key, no GPU, no download). ``recipe`` loads a YAML recipe from
``medtune_core/recipes`` (PT->SFT->DPO, SFT->DPO, SFT->ORPO, SFT->RM->RLOO, the reasoning-RL SFT->GRPO).
TRL 1.x has no PPO: the original pipeline's PPO-with-a-reward-model is ``rloo`` with ``reward_model`` among its rewards.

Every file and model the stages name is checked before the first stage writes anything. A stage whose cached
result names outputs that are gone or altered runs again (``tasks.training.train_stage``); ``force: STAGE``
retrains from that stage on. ``stage_overrides`` (``--set sft.max_steps=2``, ``--set stage.2.beta=0.2``) change
a recipe's stage settings. Rewards left out of an RL stage, or an RL stage whose reward had no variance, are
shown in a WARNING artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow
from pydantic import Field, model_validator

from medtune_core.params import OutputDir, StrictParams, unknown_key_message
from medtune_core.settings import shared_path
from medtune_core.training import STAGES, AdapterType, stage_config
from medtune_core.training.config import qlora_unavailable
from medtune_core.training.pipeline import validate_chain
from medtune_core.training.preflight import check_chain_inputs
from tasks.artifacts import publish_image, publish_markdown, publish_table
from tasks.dispatch import Device, choose_placement
from tasks.safety import SafetyEvalOptions, safety_compare, safety_eval
from tasks.training import resolve_base, run_stage_here, with_input_files
from tasks.training import train_stage as train_stage_cached

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "medtune_core" / "recipes"
RECIPE_KEYS = ["adapter", "base_model", "stages"]
#: The stage names, from the stage registry (a new registered stage is a new choice).
StageName = Literal[tuple(STAGES)]  # type: ignore[valid-type]


def _sample(name: str) -> Path:
    return REPO / "medtune_core" / "samples" / name


class StageSpec(StrictParams):
    """One stage: its name, data files and settings (any field of the stage's config)."""

    stage: StageName
    train_files: list[Path] = Field(default_factory=list, description="any supported format")
    settings: dict[str, Any] = Field(default_factory=dict, description="e.g. max_steps, learning_rate, beta")


def _default_stages() -> list[StageSpec]:
    quick = {"max_steps": 3, "batch_size": 2, "max_length": 256, "save_steps": 1000, "max_samples": 24}
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
    device: Device = Field(
        "auto",
        description="auto: the CUDA pool when a worker of it is online, else here (logged, noted in an artifact); "
        "cpu: here; cuda-pool: the CUDA pool, failing when no worker takes a stage within "
        "MEDTUNE_CUDA_START_TIMEOUT_S (600 s)",
    )
    cuda_deployment: str | None = Field(
        None, description="the CUDA pool's deployment for device auto / cuda-pool (default train-stage/cuda)"
    )
    safety_eval: bool = Field(True, description="safety metrics on the gold and red-team sets after each stage")
    safety: SafetyEvalOptions = Field(
        default_factory=lambda: SafetyEvalOptions(limit=3, max_new_tokens=48),
        description="Safety evaluation settings (default: a quick look, 3 prompts a set, 48 new tokens)",
    )
    stage_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="settings over a recipe's stages, by stage name (every stage of it) or number from 1 (as its "
        "folder): {sft: {max_steps: 2}, '2': {beta: 0.2}}; on the command line --set sft.max_steps=2, "
        "--set stage.2.beta=0.2",
    )
    force: str | None = Field(
        None, description="retrain from this stage on even when finished: a name (sft), a number (2) or 2-dpo"
    )

    @model_validator(mode="before")
    @classmethod
    def _collect_overrides(cls, data: Any) -> Any:
        """``sft: {...}`` and ``stage: {N: {...}}`` (what ``--set sft.x=1`` / ``--set stage.N.x=1`` make) become
        ``stage_overrides``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        overrides = dict(data.get("stage_overrides") or {})
        for name in STAGES:
            if isinstance(data.get(name), dict):
                overrides[name] = {**overrides.get(name, {}), **data.pop(name)}
        numbered = data.pop("stage", None)
        if numbered is not None:
            if not isinstance(numbered, dict):
                raise ValueError("stage: expected stage.N.key=value (N counts from 1, as the stage folders)")
            for n, values in numbered.items():
                overrides[str(n)] = {**overrides.get(str(n), {}), **dict(values or {})}
        if overrides:
            data["stage_overrides"] = overrides
        return data

    @model_validator(mode="after")
    def _apply_recipe(self) -> RLHFTrainingParams:
        if self.recipe:
            path = Path(self.recipe)
            if not path.is_file():
                path = RECIPES / f"{self.recipe.removesuffix('.yaml')}.yaml"
            if not path.is_file():
                known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
                raise ValueError(f"recipe {self.recipe!r}: no such file or shipped recipe (shipped: {known})")
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            if unknown := sorted(set(data) - set(RECIPE_KEYS)):  # a recipe file is as strict as the parameters
                raise ValueError(f"{path}: " + "; ".join(unknown_key_message(k, RECIPE_KEYS) for k in unknown))
            self.base_model = data.get("base_model", self.base_model)
            self.adapter = AdapterType(data.get("adapter", self.adapter))
            self.stages = [StageSpec.model_validate(s) for s in data["stages"]]
            self.recipe = None
        self._apply_overrides()
        for s in self.stages:
            s.train_files = [f if f.is_absolute() or f.exists() else REPO / f for f in s.train_files]
        if self.force is not None:
            self.first_forced()
        validate_chain(self.stage_configs("placeholder"))  # reject impossible chains before anything runs
        qlora = any(c.adapter.type is AdapterType.QLORA for c in self.stage_configs("placeholder"))
        if qlora and self.device != "cuda-pool" and (problem := qlora_unavailable()):
            # it may train here: say so now, not minutes into the run
            raise ValueError(f"{problem} (or set device: cuda-pool to train on the CUDA pool)")
        return self

    def _apply_overrides(self) -> None:
        for key, values in self.stage_overrides.items():
            if key.isdigit():
                n = int(key)
                if not 1 <= n <= len(self.stages):
                    raise ValueError(f"stage.{key}: stages are numbered 1..{len(self.stages)} (as their folders)")
                targets = [self.stages[n - 1]]
            else:
                targets = [s for s in self.stages if s.stage == key]
                if not targets:
                    raise ValueError(f"{key}: no {key} stage here (stages: {', '.join(s.stage for s in self.stages)})")
            for spec in targets:
                values = dict(values)
                if "train_files" in values:
                    spec.train_files = StageSpec(stage=spec.stage, train_files=values["train_files"]).train_files
                    values.pop("train_files")
                spec.settings = {**spec.settings, **values}
        self.stage_overrides = {}

    def first_forced(self) -> int:
        """The index of the stage ``force`` names (0 with ``all``)."""
        force = str(self.force)
        for i, s in enumerate(self.stages):
            if force in (s.stage, str(i + 1), f"{i + 1}-{s.stage}", "all"):
                return i
        raise ValueError(f"force: {force!r} names no stage (stages: {', '.join(s.stage for s in self.stages)})")

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
    # absolute under MEDTUNE_SHARED_DIR: a stage on the CUDA pool (another machine) writes where this run reads
    params = params.model_copy(update={"output_dir": shared_path(params.output_dir)})
    placement = choose_placement(params.device, params.cuda_deployment)
    base = resolve_base(params.base_model)
    configs = params.stage_configs(str(base))
    check_chain_inputs(configs)  # every stage's files, before the first one writes anything
    forced_from = params.first_forced() if params.force is not None else len(configs)
    outputs: dict[str, str] = {}
    rows = []
    warnings: list[str] = []
    reward_model: str | None = None
    safety_reports: list[str] = []
    for i, cfg in enumerate(configs):
        config = cfg.model_dump(mode="json", exclude_unset=False)
        if reward_model and "reward_model" in config and not config["reward_model"]:
            config["reward_model"] = reward_model
        result = train_stage_cached(
            cfg.stage, with_input_files(config), base, True, placement.deployment, force=i >= forced_from
        )
        key = f"{i + 1}-{cfg.stage}"
        outputs[key] = result["output_dir"]
        if cfg.stage == "rm":
            reward_model = str(result["merged_dir"])
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
        warnings.extend(_stage_warnings(key, m))
        rows.append(
            {
                "stage": key,
                "device": m.get("device") or result.get("device"),
                "steps": m.get("steps"),
                "loss first": m.get("loss_first"),
                "loss last": m.get("loss_last"),
                "eval loss": m.get("eval_loss"),
                "tokens/s": m.get("effective_tokens_per_s"),
                "loss curve": result.get("loss_curve"),
                "model": str(result.get("merged_dir") or ""),
                "trained in": placement.where,
            }
        )
    publish_table("rlhf-training-stages", rows, "Per-stage metrics, loss curves and models")
    for row in rows:
        if row["loss curve"]:
            publish_image(f"rlhf-training-loss-{row['stage']}", row["loss curve"], f"Loss curve of {row['stage']}")
    if warnings:
        publish_markdown(
            "rlhf-training-warnings",
            "# WARNING\n\n" + "\n".join(f"- {w}" for w in warnings),
            "What the stages left out or did not learn",
        )
    if len(safety_reports) > 1:
        safety_compare(safety_reports, "rlhf-training-safety", "Safety metrics after each stage")
    return outputs


def _stage_warnings(key: str, metrics: dict[str, Any]) -> list[str]:
    """What a stage's metrics say it left out or did not learn, one line each."""
    out = [
        f"{key}: reward {r['name']} (weight {r['weight']}) LEFT OUT: {r['reason']}"
        for r in metrics.get("rewards_left_out") or []
    ]
    for name, rep in (metrics.get("reward_components") or {}).items():
        if rep.get("groups_left_out"):
            out.append(
                f"{key}: reward {name} could not be computed for {rep['missing']} of {rep['samples']} samples; "
                f"left out of {rep['groups_left_out']} of {rep['groups']} group comparisons"
            )
    signal = metrics.get("reward_signal") or {}
    if signal.get("no_signal"):
        out.append(
            f"{key}: NO LEARNING SIGNAL: zero reward variance within every group in "
            f"{signal['steps_without_signal']} of {signal['steps']} steps"
        )
    return out


class TrainStageParams(StrictParams):
    """One stage, as sent by ``rlhf-training`` to the CUDA pool."""

    stage: StageName
    config: dict[str, Any]
    merge: bool = True
    force: bool = False


@flow(name="train-stage")
def train_stage(params: TrainStageParams) -> dict[str, str]:
    """Run one training stage in this worker (the ``train-stage/cuda`` deployment)."""
    out = run_stage_here(params.stage, params.config, params.merge, params.force)
    return {k: str(v) for k, v in out.items() if k in ("output_dir", "adapter_dir", "model_dir", "merged_dir")}
