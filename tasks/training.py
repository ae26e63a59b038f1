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


def run_stage_here(stage: str, config: dict[str, Any], merge: bool) -> dict[str, Any]:
    result = get_stage(stage).run(config)
    out = result.to_dict()
    if merge and (result.adapter_dir is not None or result.model_dir is not None):
        out["merged_dir"] = str(merged_model_of(result))
    return out


def _dispatch(deployment: str, stage: str, config: dict[str, Any], merge: bool) -> dict[str, Any]:
    from prefect.deployments import run_deployment

    params = {"params": {"stage": stage, "config": config, "merge": merge}}
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
