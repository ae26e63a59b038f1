"""Deploying medtune to a Prefect server: work pools, deployments, or serving everything from one process.

``deploy_all`` creates the pools if missing (``medtune-cpu`` and ``medtune-cuda``, the latter limited to one
run per GPU) and runs ``prefect deploy --all`` on ``deployments/prefect.yaml`` with this checkout as the
workers' working directory. ``serve_all`` is the single-machine alternative: every flow served from one
process, no worker or pool needed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
CPU_POOL = "medtune-cpu"
CUDA_POOL = "medtune-cuda"


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


def deploy_all(gpus: int = 1, cuda_pool_type: str = "process", prefect_file: Path = PREFECT_FILE) -> None:
    """Pools, then every deployment of ``prefect_file``; raises with Prefect's output when deploying fails."""
    for pool, state in ensure_work_pools(gpus, cuda_pool_type).items():
        log.info("work pool %s: %s", pool, state)
    env = {**os.environ, "MEDTUNE_CHECKOUT": os.environ.get("MEDTUNE_CHECKOUT", str(REPO))}
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    log.info("deployed every flow of %s", prefect_file)


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
    """Serve every flow from this process (blocks); runs start from the UI or on the nightly schedule."""
    from prefect import serve

    serve(*serve_deployments())
