"""Training tasks: one cached task per stage, on this process or on the CUDA pool.

The cache key is content-based (:data:`tasks.caching.CONTENT_AWARE`): the resolved base-model folder (hashed by
its files, so a re-merged previous stage with new weights is a new key), the stage name and its whole config
(training files hashed by content). Re-running a failed pipeline therefore skips every finished stage.

When ``cuda_deployment`` is given (e.g. ``train-stage/cuda``, the ``train-stage`` flow on the ``medtune-cuda``
pool), the stage runs there through ``run_deployment``; Prefect returns a failed child run without raising, so
its final state is checked and a failed child fails this task. Workers must share the output folder
(the child writes ``result.json`` where the parent reads it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtune_core.errors import MedtuneError
from medtune_core.training import StageResult, get_stage, merged_model_of, resolve_model_ref
from tasks.base import medtune_task


def resolve_base(model: str) -> Path:
    """The local folder of a model reference (materialising an embedded model once)."""
    return resolve_model_ref(model)


def with_input_files(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a stage config as JSON) with every file the stage reads as a ``Path``.

    A ``Path`` argument enters the task's cache key by location *and contents*, a string by its text only: without
    this, a training or words file edited in place would bring back the stage trained on its old contents. The
    output folder stays a string (its contents change once the stage has run).
    """
    out = dict(config)
    for key in ("train_files", "eval_files"):
        out[key] = [Path(p) for p in out.get(key) or []]
    for key in ("chat_template", "reward_model"):
        if isinstance(out.get(key), str) and Path(out[key]).exists():
            out[key] = Path(out[key])
    if isinstance(out.get("extend_vocab"), dict):
        ext = dict(out["extend_vocab"])
        if ext.get("words_file"):
            ext["words_file"] = Path(ext["words_file"])
        ext["learn_from"] = [Path(p) for p in ext.get("learn_from") or []]
        out["extend_vocab"] = ext
    return out


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(config, default=str))


def run_stage_here(stage: str, config: dict[str, Any], merge: bool) -> dict[str, Any]:
    result = get_stage(stage).run(config)
    out = result.to_dict()
    if merge and (result.adapter_dir is not None or result.model_dir is not None):
        out["merged_dir"] = str(merged_model_of(result))
    return out


def _dispatch(deployment: str, stage: str, config: dict[str, Any], merge: bool) -> dict[str, Any]:
    from prefect.deployments import run_deployment

    params = {"params": {"stage": stage, "config": _jsonable(config), "merge": merge}}
    run = run_deployment(deployment, parameters=params, timeout=None)
    state = run.state
    if state is None or not state.is_completed():
        name = state.name if state is not None else "unknown"
        raise MedtuneError(f"stage {stage}: child run {run.id} on {deployment} ended {name}: {state and state.message}")
    path = Path(config["output_dir"]) / "result.json"
    if not path.is_file():
        raise MedtuneError(f"stage {stage}: the child run finished but {path} is missing (shared storage?)")
    out = json.loads(path.read_text())
    if merge:
        out["merged_dir"] = str(merged_model_of(StageResult.from_dict(out)))
    return out


@medtune_task(name="train-stage", retry="gpu", tags=["training"])
def train_stage_task(
    stage: str,
    config: dict[str, Any],
    base: Path,
    merge: bool = True,
    cuda_deployment: str | None = None,
) -> dict[str, Any]:
    """Train one stage (config as a dict, ``model`` already resolved to ``base``); returns its result dict."""
    config = {**config, "model": str(base)}
    if cuda_deployment:
        return _dispatch(cuda_deployment, stage, config, merge)
    return run_stage_here(stage, config, merge)
