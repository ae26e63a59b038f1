"""Where a GPU stage runs: in this process, or on the CUDA pool through its deployment. Never a silent wait.

``device`` (a parameter of ``rlhf-training``):

- ``cpu``: every stage trains in the flow run's own process.
- ``cuda-pool``: every stage goes to the CUDA pool (deployment ``train-stage/cuda`` unless named). A child run that
  no worker takes within ``MEDTUNE_CUDA_START_TIMEOUT_S`` (default 600 s) is cancelled and the stage fails with
  the pool's name and the command that starts its worker; while it waits, a line is logged every 30 s.
- ``auto`` (default): the CUDA pool when this run's server has the deployment and a worker of its pool is online;
  otherwise here, said in a log line and in the run's ``rlhf-training-device`` artifact.

Once a worker has taken the child run there is no time limit (training takes what it takes); a child whose process
dies is marked Crashed by the heartbeat automation ``medtune deploy`` creates, and the stage fails with it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Literal

from prefect import get_run_logger

from medtune_core.errors import MedtuneError
from tasks.artifacts import publish_markdown

Device = Literal["auto", "cpu", "cuda-pool"]
DEFAULT_CUDA_DEPLOYMENT = "train-stage/cuda"
START_TIMEOUT_S = 600
LOG_EVERY_S = 30.0
POLL_S = 2.0


@dataclass(frozen=True)
class Placement:
    """Where the stages of one run train: ``deployment`` None means in this process."""

    device: str
    deployment: str | None
    pool: str | None
    reason: str

    @property
    def where(self) -> str:
        return f"CUDA pool {self.pool} ({self.deployment})" if self.deployment else "this process"


def start_timeout_s() -> float:
    """How long a child run may wait for a worker: ``MEDTUNE_CUDA_START_TIMEOUT_S`` seconds (default 600)."""
    return float(os.environ.get("MEDTUNE_CUDA_START_TIMEOUT_S") or START_TIMEOUT_S)


def start_command(pool: str | None) -> str:
    return f"prefect worker start --pool {pool or 'medtune-cuda'}"


def _pool_status(deployment: str) -> tuple[str, int] | None:
    """``(pool, workers online)`` of ``deployment`` on this run's server; None when the server has no such
    deployment (``medtune run`` on an ephemeral server, or the deployment was never created)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            return None
        if not found.work_pool_name:
            return None
        workers = client.read_workers_for_work_pool(found.work_pool_name)
        return found.work_pool_name, sum(1 for w in workers if str(w.status).upper().endswith("ONLINE"))


def choose_placement(device: str, cuda_deployment: str | None = None) -> Placement:
    """Decide once per run where its stages train; logs the decision, and notes a fallback in an artifact."""
    logger = get_run_logger()
    deployment = cuda_deployment or DEFAULT_CUDA_DEPLOYMENT
    if device == "cpu":
        placement = Placement(device, None, None, "device=cpu: every stage trains in this process")
    else:
        status = _pool_status(deployment)
        pool = status[0] if status else None
        if device == "cuda-pool":
            if status is None:
                raise MedtuneError(
                    f"device=cuda-pool: this server has no deployment {deployment}; run `medtune deploy` "
                    f"(or set cuda_deployment), or use device=auto or cpu"
                )
            placement = Placement(device, deployment, pool, f"device=cuda-pool: stages go to {deployment}")
        elif status is None:
            placement = Placement(device, None, None, f"device=auto: no deployment {deployment}; training here")
        elif status[1] == 0:
            placement = Placement(
                device,
                None,
                pool,
                f"device=auto: no worker of pool {pool} is online, so the stages train HERE, in this flow run's "
                f"process (start one with `{start_command(pool)}`, or set device=cuda-pool to wait for it)",
            )
        else:
            placement = Placement(device, deployment, pool, f"device=auto: {status[1]} worker(s) of {pool} online")
    logger.info("%s -> stages train in %s", placement.reason, placement.where)
    if device == "auto" and placement.deployment is None:
        publish_markdown("rlhf-training-device", f"**Stages trained in this process.** {placement.reason}.")
    return placement


def _wait_for_child(run_id: Any, pool: str | None, timeout_s: float) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    logger = get_run_logger()
    start = time.monotonic()
    last_log = start
    started = False
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            state = run.state
            if state is not None and state.is_final():
                return run
            waiting = state is None or state.type == StateType.SCHEDULED
            now = time.monotonic()
            if waiting and now - start > timeout_s:
                client.set_flow_run_state(run_id, Cancelled(message="no worker took it"), force=True)
                raise MedtuneError(
                    f"no worker of pool {pool} took child run {run.name} ({run_id}) within {timeout_s:.0f} s: "
                    f"start one with `{start_command(pool)}` (or run with device=cpu)"
                )
            if waiting and now - last_log >= LOG_EVERY_S:
                logger.info(
                    "child run %s waits for a worker of pool %s (%.0f s of %.0f s); start one with `%s`",
                    run.name,
                    pool,
                    now - start,
                    timeout_s,
                    start_command(pool),
                )
                last_log = now
            if not waiting and not started:
                logger.info("child run %s is %s on pool %s", run.name, state.name if state else "?", pool)
                started = True
            time.sleep(POLL_S)


def run_child(deployment: str, parameters: dict[str, Any]) -> Any:
    """Start ``deployment`` as a child of this run and wait for its final state (bounded while no worker takes
    it, see the module docstring); returns the child flow run."""
    from prefect.deployments import run_deployment

    pool = _pool_status(deployment)
    pool_name = pool[0] if pool else None
    run = run_deployment(deployment, parameters=parameters, timeout=0)
    get_run_logger().info("sent to %s (pool %s): child run %s", deployment, pool_name, run.name)
    return _wait_for_child(run.id, pool_name, start_timeout_s())
