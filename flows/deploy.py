"""Deploying medtune to a Prefect server: work pools, deployments, the crash detector, or serving from one process.

``deploy_all`` creates the pools if missing (``medtune-cpu`` and ``medtune-cuda``, the latter limited to one
run per GPU), runs ``prefect deploy --all`` on ``deployments/prefect.yaml`` with this checkout as the
workers' code and medtune's result storage and heartbeat settings in every deployment's job variables, and
creates the automation that marks a flow run Crashed when its heartbeats stop (a worker killed with ``kill -9``
or a machine that died leaves its run Running otherwise, and the UI offers no Retry). ``serve_all`` is the
single-machine alternative: every flow served from one process, no worker or pool needed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from tasks.prefect_env import CRASH_AFTER_HEARTBEATS, deployment_env, heartbeat_seconds

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
CPU_POOL = "medtune-cpu"
CUDA_POOL = "medtune-cuda"
CRASH_AUTOMATION = "medtune: crash flow runs whose heartbeats stopped"


async def _ensure_pool(name: str, pool_type: str, concurrency_limit: int | None) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.base import BaseWorker

    async with get_client() as client:
        try:
            await client.read_work_pool(name)
        except ObjectNotFound:
            worker_cls = BaseWorker.get_worker_class_from_type(pool_type)
            template = worker_cls.get_default_base_job_template() if worker_cls else {}
            await client.create_work_pool(
                WorkPoolCreate(
                    name=name, type=pool_type, base_job_template=template, concurrency_limit=concurrency_limit
                )
            )
            return "created"
        await client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=concurrency_limit))
        return "exists"


def ensure_work_pools(gpus: int = 1, cuda_pool_type: str = "process") -> dict[str, str]:
    """Create ``medtune-cpu`` (process) and ``medtune-cuda`` (limit = GPU count) where missing."""
    return {
        CPU_POOL: asyncio.run(_ensure_pool(CPU_POOL, "process", None)),
        CUDA_POOL: asyncio.run(_ensure_pool(CUDA_POOL, cuda_pool_type, max(gpus, 1))),
    }


def crash_after_seconds() -> int:
    """How long without a heartbeat before a run is marked Crashed: ``MEDTUNE_CRASH_AFTER_S`` or three
    heartbeats (never less than one heartbeat plus 15 s of slack, or a live run would be crashed)."""
    beat = heartbeat_seconds()
    value = int(os.environ.get("MEDTUNE_CRASH_AFTER_S") or CRASH_AFTER_HEARTBEATS * beat)
    return max(value, beat + 15)


async def _ensure_crash_automation(within_s: int) -> str:
    """The zombie detector Prefect documents: after a flow run's heartbeat, expect another heartbeat (or a final
    state) within ``within_s``; otherwise set the run Crashed. Replaces an older copy of itself."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    automation = AutomationCore(
        name=CRASH_AUTOMATION,
        description=f"A flow run that sent no heartbeat for {within_s} s (its process or machine died) is Crashed.",
        trigger=EventTrigger(
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {within_s} s: the process running this flow run (or its machine) died.",
            )
        ],
    )
    async with get_client() as client:
        existing = await client.read_automations_by_name(CRASH_AUTOMATION)
        for old in existing:
            await client.delete_automation(old.id)
        await client.create_automation(automation)
    return "replaced" if existing else "created"


def ensure_crash_automation(within_s: int | None = None) -> str:
    return asyncio.run(_ensure_crash_automation(within_s or crash_after_seconds()))


def deployment_file(prefect_file: Path, env: dict[str, str]) -> dict[str, Any]:
    """``prefect_file`` with ``env`` merged into every deployment's job variables (a deployment's own values win)."""
    spec = yaml.safe_load(prefect_file.read_text(encoding="utf-8"))
    for deployment in spec.get("deployments", []):
        pool = deployment.setdefault("work_pool", {})
        variables = pool["job_variables"] = dict(pool.get("job_variables") or {})
        variables["env"] = {**env, **(variables.get("env") or {})}
    return spec


def deploy_all(gpus: int = 1, cuda_pool_type: str = "process", prefect_file: Path = PREFECT_FILE) -> None:
    """Pools, every deployment of ``prefect_file``, the crash automation; raises with Prefect's output on failure."""
    for pool, state in ensure_work_pools(gpus, cuda_pool_type).items():
        log.info("work pool %s: %s", pool, state)
    env = {**os.environ, "MEDTUNE_CHECKOUT": os.environ.get("MEDTUNE_CHECKOUT", str(REPO))}
    job_env = deployment_env()
    with tempfile.TemporaryDirectory(prefix="medtune-deploy-") as tmp:
        spec_file = Path(tmp) / "prefect.yaml"
        spec_file.write_text(yaml.safe_dump(deployment_file(prefect_file, job_env), sort_keys=False), "utf-8")
        cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(spec_file)]
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    log.info("deployed every flow of %s (job variables: %s)", prefect_file, ", ".join(sorted(job_env)))
    within = crash_after_seconds()
    log.info("crash automation (%s s without a heartbeat): %s", within, ensure_crash_automation(within))


def serve_deployments() -> list[Any]:
    """One deployment per registered flow (default parameters) plus the nightly synthesis schedule."""
    from flows.data_synthesis import nightly_deployment
    from flows.registry import FLOWS, load_flow

    deployments = []
    for name in FLOWS:
        flow_obj, model = load_flow(name)
        params = model.model_validate({"output_dir": f"out/{name}"})
        deployments.append(flow_obj.to_deployment(name="served", parameters={"params": params.model_dump(mode="json")}))
    deployments.append(nightly_deployment())
    return deployments


def serve_all() -> None:
    """Serve every flow from this process (blocks); runs start from the UI or on the nightly schedule.

    Needs a running server named by ``PREFECT_API_URL``: without one Prefect would start a throw-away ephemeral
    server that no UI shows and that forgets the schedule when this process ends."""
    from prefect import serve
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise SystemExit(
            "error: medtune serve needs a running Prefect server: start `prefect server start --host 127.0.0.1`, "
            "then export PREFECT_API_URL=http://127.0.0.1:4200/api (docs/OPERATIONS.md)"
        )

    serve(*serve_deployments())
