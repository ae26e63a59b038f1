"""Point Prefect at medtune's result storage before Prefect reads its settings.

Prefect reads most settings once, from the environment. ``apply_prefect_defaults`` fills in (never
overrides) the variables medtune needs: results persisted by default, stored under
``MEDTUNE_HOME/results`` or in the shared storage block named by ``MEDTUNE_RESULT_STORAGE`` (an S3 bucket
or a shared filesystem, so CPU and CUDA workers on different machines see each other's cached results).
Call it at process start, before ``import prefect``: the CLI, the serve script and the test fixture do.
"""

from __future__ import annotations

import os

from medtune_core.settings import get_settings


def prefect_defaults() -> dict[str, str]:
    settings = get_settings()
    env = {
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_LOCAL_STORAGE_PATH": str(settings.results_dir),
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
        # No machine here reaches the internet; telemetry would only log an error on every server start.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The ephemeral server needs 8-26 s on a busy 2-core machine; Prefect's default wait is shorter.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    if settings.result_storage:
        env["PREFECT_DEFAULT_RESULT_STORAGE_BLOCK"] = settings.result_storage
    return env


def apply_prefect_defaults() -> dict[str, str]:
    """Set the defaults in ``os.environ`` where unset; returns what was set."""
    applied = {}
    for key, value in prefect_defaults().items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied
