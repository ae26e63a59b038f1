"""Training tasks: one cached task per stage, on this process or on the CUDA pool.

The cache key is content-based (:data:`tasks.caching.CONTENT_AWARE`): the resolved base-model folder (hashed by
its files, so a re-merged previous stage with new weights is a new key), the stage name and its whole config
(training files, chat template, reward models hashed by content). Re-running a failed pipeline therefore skips
every finished stage. The same inputs make the stage's identity in the core (:mod:`medtune_core.training.identity`),
which decides what the stage's folder is worth when the task does run.

A cached result names folders: the adapter (or model) and ``merged/`` come back as
:class:`~tasks.caching.OutputPath` (a path that remembers its contents), and :func:`train_stage` hands the result
on through the one freshness check (:func:`tasks.base.fresh`): a folder deleted or altered since runs the task
again, and the core then reuses what is intact (a deleted ``merged/`` is merged again, nothing retrains) and
retrains what is not. ``force`` retrains even a finished stage; it is not part of the cache key (the forced result
replaces the cached one).

When ``cuda_deployment`` is given (e.g. ``train-stage/cuda``, the ``train-stage`` flow on the ``medtune-cuda``
pool), the stage runs there through ``run_deployment``; Prefect returns a failed child run without raising, so
its final state is checked and a failed child fails this task. Workers must share the output folder
(the child writes ``result.json`` where the parent reads it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect.cache_policies import TASK_SOURCE

from medtune_core.errors import MedtuneError
from medtune_core.training import StageResult, get_stage, merged_model_of, resolve_model_ref
from tasks.base import fresh, medtune_task
from tasks.caching import ContentInputs, OutputPath


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
    if isinstance(out.get("rewards"), list):
        rewards = []
        for spec in out["rewards"]:
            options = dict(spec.get("options") or {})
            if isinstance(options.get("path"), str) and Path(options["path"]).exists():
                options["path"] = Path(options["path"])
            rewards.append({**spec, "options": options})
        out["rewards"] = rewards
    if isinstance(out.get("extend_vocab"), dict):
        ext = dict(out["extend_vocab"])
        if ext.get("words_file"):
            ext["words_file"] = Path(ext["words_file"])
        ext["learn_from"] = [Path(p) for p in ext.get("learn_from") or []]
        out["extend_vocab"] = ext
    return out


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(config, default=str))


#: Result keys that name a stage's trained outputs: checked by :func:`tasks.base.fresh` before a cached reuse.
OUTPUT_KEYS = ("adapter_dir", "model_dir", "merged_dir")


def checked_outputs(out: dict[str, Any]) -> dict[str, Any]:
    """``out`` with its output folders as :class:`OutputPath` (their contents recorded for the freshness check)."""
    return {k: (OutputPath.of(v) if k in OUTPUT_KEYS and v else v) for k, v in out.items()}


def run_stage_here(stage: str, config: dict[str, Any], merge: bool, force: bool = False) -> dict[str, Any]:
    result = get_stage(stage).run(_jsonable(config), force=force)
    out = result.to_dict()
    if merge and (result.adapter_dir is not None or result.model_dir is not None):
        out["merged_dir"] = str(merged_model_of(result))
    return out


def _dispatch(deployment: str, stage: str, config: dict[str, Any], merge: bool, force: bool) -> dict[str, Any]:
    from tasks.dispatch import run_child

    params = {"params": {"stage": stage, "config": _jsonable(config), "merge": merge, "force": force}}
    run = run_child(deployment, params)  # bounded wait for a worker, logged (never a silent wait)
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


@medtune_task(
    name="train-stage", retry="gpu", tags=["training"], cache_policy=TASK_SOURCE + ContentInputs(exclude=["force"])
)
def train_stage_task(
    stage: str,
    config: dict[str, Any],
    base: Path,
    merge: bool = True,
    cuda_deployment: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Train one stage (config as a dict, ``model`` already resolved to ``base``); returns its result dict."""
    config = {**config, "model": str(base)}
    if cuda_deployment:
        return checked_outputs(_dispatch(cuda_deployment, stage, config, merge, force))
    return checked_outputs(run_stage_here(stage, config, merge, force))


def train_stage(
    stage: str,
    config: dict[str, Any],
    base: Path,
    merge: bool = True,
    cuda_deployment: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """:func:`train_stage_task`, run again (its cache refreshed) when forced or when a cached result names
    outputs that are gone or altered (:func:`tasks.base.fresh`)."""
    args = (stage, config, base, merge, cuda_deployment)
    if force:
        return train_stage_task.with_options(refresh_cache=True)(*args, force=True)
    return fresh(train_stage_task, train_stage_task(*args), *args)
