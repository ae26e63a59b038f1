"""Point Prefect at medtune's result storage and shared location, in every process that runs a flow.

Prefect reads most settings once, from the environment. ``apply_prefect_defaults`` fills in (never
overrides) the variables medtune needs: results persisted by default, stored under
``MEDTUNE_HOME/results`` or in the shared storage block named by ``MEDTUNE_RESULT_STORAGE`` (an S3 bucket
or a shared filesystem, so CPU and CUDA workers on different machines see each other's cached results), and
flow-run heartbeats (``medtune deploy`` creates the automation that marks a run whose heartbeats stop Crashed).

Three ways in, so that the setting holds whoever starts the flow run:

- the ``medtune`` command (``run``, ``serve``, ``deploy``) and the test fixture call it at process start;
- importing the ``tasks`` package (every flow module does) calls :func:`apply_in_process`: a flow run that a
  plain ``prefect worker start`` launched honours ``MEDTUNE_RESULT_STORAGE`` from the worker's environment;
- ``medtune deploy`` writes :func:`deployment_env` into each deployment's job variables, so the run's process
  gets the deploying machine's storage block even where the worker's environment says nothing.

:func:`enter_shared_location` is the deployments' pull step: a worker's flow run works in ``MEDTUNE_SHARED_DIR``
(the same mount on every machine), never in whatever folder the worker was started from. When the run is a retry of an
attempt whose process died, it also sets the task runs that attempt left Running to Crashed
(:func:`crash_orphaned_task_runs`): the heartbeat automation crashes flow runs only.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from medtune_core.settings import get_settings

log = logging.getLogger(__name__)

#: Seconds between flow-run heartbeats unless PREFECT_FLOWS_HEARTBEAT_FREQUENCY says otherwise (Prefect's minimum
#: is 30). A run whose heartbeats stop for CRASH_AFTER_HEARTBEATS of them is marked Crashed (``medtune deploy``).
HEARTBEAT_SECONDS = 60
CRASH_AFTER_HEARTBEATS = 3


def heartbeat_seconds() -> int:
    """The flow-run heartbeat interval in effect for processes medtune configures."""
    value = os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY") or os.environ.get("PREFECT_RUNNER_HEARTBEAT_FREQUENCY")
    return int(value) if value else HEARTBEAT_SECONDS


def result_storage_env() -> dict[str, str]:
    """The variables that decide where task results (the cache) live."""
    settings = get_settings()
    env = {"PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true"}
    if settings.result_storage:
        env["PREFECT_DEFAULT_RESULT_STORAGE_BLOCK"] = settings.result_storage
        env["MEDTUNE_RESULT_STORAGE"] = settings.result_storage
    return env


def prefect_defaults() -> dict[str, str]:
    settings = get_settings()
    return {
        **result_storage_env(),
        "PREFECT_LOCAL_STORAGE_PATH": str(settings.results_dir),
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat_seconds()),
        # No machine here reaches the internet; telemetry would only log an error on every server start.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The ephemeral server needs 8-26 s on a busy 2-core machine; Prefect's default wait is shorter.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }


def apply_prefect_defaults() -> dict[str, str]:
    """Set the defaults in ``os.environ`` where unset; returns what was set."""
    applied = {}
    for key, value in prefect_defaults().items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied


def apply_in_process() -> dict[str, str]:
    """:func:`apply_prefect_defaults`, and when Prefect has already read its settings (a flow run launched by a
    worker imports Prefect before the flow's module), make Prefect read them again so that they take effect."""
    applied = apply_prefect_defaults()
    if applied and "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    return applied


def deployment_env() -> dict[str, str]:
    """What ``medtune deploy`` writes into every deployment's job variables (``env``)."""
    return {**result_storage_env(), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat_seconds())}


def enter_shared_location(checkout: str | None = None) -> dict[str, str]:
    """Pull step of every deployment: make this checkout's code importable, then work in the shared location.

    With ``MEDTUNE_SHARED_DIR`` set (on the worker), the flow run's working folder is that folder (created if
    missing), so relative paths in parameters (outputs, and inputs written by earlier flows) mean the same files
    on every machine. Unset: the checkout (one machine). Then :func:`crash_orphaned_task_runs`. Returns
    ``{"directory": ...}`` as Prefect's steps do.
    """
    if checkout and Path(checkout).is_dir() and checkout not in sys.path:
        sys.path.insert(0, checkout)
    shared = get_settings().shared_dir
    if shared is not None:
        directory = shared.expanduser().absolute()
        directory.mkdir(parents=True, exist_ok=True)
    elif checkout and Path(checkout).is_dir():
        directory = Path(checkout)
        log.info("MEDTUNE_SHARED_DIR is unset: this run works in %s (outputs stay on this machine)", directory)
    else:
        directory = Path.cwd()
    os.chdir(directory)
    crash_orphaned_task_runs()
    return {"directory": str(directory)}


def crash_orphaned_task_runs(flow_run_id: str | None = None) -> int:
    """Task runs of this flow run still Pending/Running when a new attempt starts: their process died with an
    earlier attempt (``kill -9``, a lost machine). Set them Crashed, so the UI stops showing them Running; returns
    how many. Called before the flow starts, when no task of the new attempt runs yet."""
    flow_run_id = flow_run_id or os.environ.get("PREFECT__FLOW_RUN_ID")
    if not flow_run_id:
        return 0
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    alive = TaskRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
    with get_client(sync_client=True) as client:
        orphans = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])),
            task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=alive)),
        )
        for run in orphans:
            message = f"its flow run's attempt {run.flow_run_run_count} ended without it (the process died)"
            client.set_task_run_state(run.id, Crashed(message=message), force=True)
            log.info("task run %s: Crashed (%s)", run.name, message)
    return len(orphans)
