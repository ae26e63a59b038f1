"""Checks a stage passes before it writes anything: every file and model it names is there.

A missing training file found after ``stage_config.json`` is written (or after a previous stage's outputs were
moved aside) costs a confusing half-written folder; a chain checked stage by stage finds the missing file of its
third stage after training two. :func:`check_stage_inputs` and :func:`check_chain_inputs` list every problem at
once and raise before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medtune_core.errors import MedtuneError
from medtune_core.training.config import AdapterType, OnlineRLConfig, StageConfig, deepspeed_config_path


def _file_problems(config: StageConfig) -> list[str]:
    problems: list[str] = []
    if not config.train_files:
        problems.append("no train_files given")
    for key in ("train_files", "eval_files"):
        for f in getattr(config, key):
            if not Path(f).is_file():
                problems.append(f"{key}: {f}: no such file")
    if config.chat_template and not Path(config.chat_template).exists():
        problems.append(f"chat_template: {config.chat_template}: no such file or folder")
    ext = getattr(config, "extend_vocab", None)
    if ext is not None:
        for f in [ext.words_file, *ext.learn_from]:
            if f is not None and not Path(f).is_file():
                problems.append(f"extend_vocab: {f}: no such file")
    if config.deepspeed:
        try:
            deepspeed_config_path(config.deepspeed)
        except MedtuneError as exc:
            problems.append(str(exc))
    return problems


def reward_model_paths(config: StageConfig) -> list[str]:
    """The reward-model folders an online RL stage reads (its ``reward_model`` and rewards' ``options.path``)."""
    if not isinstance(config, OnlineRLConfig):
        return []
    paths = [str(r.options["path"]) for r in config.rewards if r.name == "reward_model" and r.options.get("path")]
    wants = any(r.name == "reward_model" and not r.options.get("path") for r in config.rewards)
    if wants and config.reward_model:
        paths.append(config.reward_model)
    return paths


def _model_problems(config: StageConfig, *, check_model: bool) -> list[str]:
    from medtune_core.training.runner import resolve_model_ref

    problems: list[str] = []
    if check_model:
        try:
            resolve_model_ref(config.model)
        except MedtuneError as exc:
            problems.append(f"model: {exc}")
    for path in reward_model_paths(config):
        if not (Path(path) / "config.json").is_file():
            problems.append(f"reward model {path}: not a model folder (no config.json)")
    return problems


def check_stage_inputs(config: StageConfig, *, adapter: str | Path | None = None, check_model: bool = True) -> None:
    """Raise one :class:`MedtuneError` listing every missing file, model or adapter of the stage."""
    problems = _file_problems(config) + _model_problems(config, check_model=check_model)
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        problems.append(f"adapter {adapter}: not an adapter folder (no adapter_config.json)")
    if config.adapter.type is AdapterType.QLORA and config.device != "cpu":
        from medtune_core.training.config import qlora_unavailable

        if problem := qlora_unavailable():
            problems.append(problem)
    if problems:
        raise MedtuneError(f"{config.stage}: " + "; ".join(problems))


def check_chain_inputs(configs: Sequence[StageConfig], *, first_model: bool = True) -> None:
    """Every stage's files (and the first stage's model: later ones train on what the chain makes)."""
    problems: list[str] = []
    for i, cfg in enumerate(configs):
        try:
            check_stage_inputs(cfg, check_model=first_model and i == 0)
        except MedtuneError as exc:
            problems.append(f"stage {i + 1} {exc}")
    if problems:
        raise MedtuneError("; ".join(problems))
