"""A real Prefect server for the end-to-end tests: ``prefect server start`` + ``medtune deploy`` + process workers.

Loaded as a pytest plugin (``pytest_plugins = ["tests.e2e_server"]`` in each e2e module), so the
session-scoped ``prefect_stack`` fixture is ONE server shared by every e2e module of the run, started on first
use and torn down (whole process groups) at the end of the session.

The stack: ``prefect server start`` on 127.0.0.1 on a free port (SQLite under a temporary ``PREFECT_HOME``,
scheduler service off so the nightly schedule cannot start a run mid-test), ``medtune deploy`` against it
(pools ``medtune-cpu`` / ``medtune-cuda`` and every deployment of ``deployments/prefect.yaml``), and one
process worker per pool. Flow runs get a temporary ``MEDTUNE_HOME`` (results, caches) but the test session's
``MEDTUNE_MODELS_DIR`` (models materialised once per machine).

:class:`PrefectStack` talks to the REST API with plain HTTP, the way the UI does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
#: The state the UI sends with the form's parameters from Run → Quick run (a form when a deployment has required
#: parameters; Prefect 3.8, UI v2): body = {parameters, enforce_parameter_schema, state}.
UI_RUN_STATE = {
    "type": "SCHEDULED",
    "message": "Run from the Prefect UI",
    "state_details": {"deferred": False, "untrackable_result": False, "pause_reschedule": False},
}
#: What the UI's Retry button sends to ``POST /flow_runs/{id}/set_state`` (Prefect 3.8, UI v2).
#: Statuses a client should retry (Prefect's client retries these too), and how many tries (~1 min of backoff).
RETRYABLE = {429, 502, 503}
RETRIES = 10
UI_RETRY = {"state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"}, "force": True}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class PrefectStack:
    """Handles on the running server, its workers and the temporary folders."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/api"
        self.medtune_home = root / "medtune-home"
        self.prefect_home = root / "prefect-home"
        self.work = root / "work"
        for d in (self.medtune_home, self.prefect_home, self.work):
            d.mkdir(parents=True)
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self.http = httpx.Client(base_url=self.api_url, timeout=30)
        self.env = self._env()

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.prefect_home),
            PREFECT_API_URL=self.api_url,
            PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{self.prefect_home / 'prefect.db'}",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
            # Services the tests never exercise: each one is another SQLite writer on a 2-core CI machine.
            PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED="false",
            PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
            PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED="false",
            PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED="false",
            PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED="false",
            PREFECT_SERVER_LOG_RETRYABLE_ERRORS="true",
            PREFECT_API_DATABASE_TIMEOUT="30",
            PREFECT_RESULTS_PERSIST_BY_DEFAULT="true",
            PREFECT_LOCAL_STORAGE_PATH=str(self.medtune_home / "results"),
            PREFECT_LOGGING_LEVEL="INFO",
            PREFECT_WORKER_QUERY_SECONDS="2",
            PREFECT_WORKER_PREFETCH_SECONDS="5",
            MEDTUNE_HOME=str(self.medtune_home),
            MEDTUNE_MODELS_DIR=os.environ["MEDTUNE_MODELS_DIR"],
            MEDTUNE_CHECKOUT=str(REPO),
            PYTHONUNBUFFERED="1",
        )
        env.pop("MEDTUNE_RESULT_STORAGE", None)
        return env

    # ------------------------------------------------------------------------------------------ processes

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                args, cwd=REPO, env=env or self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[name] = (proc, log)
        return proc

    def stop_all(self) -> None:
        """TERM every process group (workers first, so their flow runs go with them), then KILL what is left."""
        for proc, _ in reversed(list(self.procs.values())):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc, _ in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in self.stray_pids():  # flow runs a worker started in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.http.close()

    def stray_pids(self) -> list[int]:
        """Processes still carrying this stack's MEDTUNE_HOME: only ever started by this stack."""
        marker = f"MEDTUNE_HOME={self.medtune_home}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if marker in (entry / "environ").read_bytes().split(b"\0"):
                        pids.append(int(entry.name))
        return pids

    def process_logs(self) -> str:
        return "\n".join(f"--- {name} ({log}) ---\n{_tail(log)}" for name, (_, log) in self.procs.items())

    def wait_healthy(self, timeout: float = 120) -> None:
        server, _ = self.procs["server"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"prefect server exited ({server.returncode}):\n{self.process_logs()}")
            try:
                if self.http.get("/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"prefect server not healthy after {timeout:.0f} s:\n{self.process_logs()}")

    # ------------------------------------------------------------------------------------------ REST API

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """One API call, retried on 429/502/503 with backoff as Prefect's own client and the UI do.

        A SQLite-backed server answers 503 while another writer holds the database (busy CI machines).
        """
        delay = 0.5
        for _attempt in range(RETRIES):
            r = self.http.request(method, path, json=body)
            if r.status_code not in RETRYABLE:
                break
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text[:2000]}\n{self.process_logs()}"
        return r

    def post(self, path: str, body: Any = None) -> Any:
        r = self.request("POST", path, body)
        return r.json() if r.content else None

    def get(self, path: str) -> Any:
        return self.request("GET", path).json()

    def deployments(self) -> dict[str, dict[str, Any]]:
        """Every deployment by ``flow-name/deployment-name``."""
        flows = {f["id"]: f["name"] for f in self.post("/flows/filter", {})}
        return {f"{flows[d['flow_id']]}/{d['name']}": d for d in self.post("/deployments/filter", {})}

    def run_deployment(self, deployment: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
        """Create a flow run exactly as the UI's Run dialog does."""
        body = {"parameters": parameters, "enforce_parameter_schema": True, "state": UI_RUN_STATE}
        return self.post(f"/deployments/{deployment['id']}/create_flow_run", body)

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return self.get(f"/flow_runs/{run_id}")

    def wait_final(self, run_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Poll until every run is in a terminal state (or the time is up); returns the runs by id."""
        deadline = time.monotonic() + timeout
        runs: dict[str, dict[str, Any]] = {}
        pending = list(run_ids)
        while pending:
            for run_id in list(pending):
                runs[run_id] = self.flow_run(run_id)
                if runs[run_id]["state_type"] in TERMINAL:
                    pending.remove(run_id)
            if pending and time.monotonic() > deadline:
                break
            if pending:
                time.sleep(1)
        return runs

    def run_logs(self, run_id: str, limit: int = 200) -> str:
        logs = self.post(
            "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": limit}
        )
        return "\n".join(f"{entry['timestamp']} {entry['level']:>2} {entry['message']}" for entry in logs)

    def retry_like_ui(self, run_id: str) -> dict[str, Any]:
        """What the UI's Retry button does: force the finished run back to Scheduled (AwaitingRetry)."""
        return self.post(f"/flow_runs/{run_id}/set_state", UI_RETRY)

    def task_runs(self, run_id: str) -> list[dict[str, Any]]:
        return self.post(
            "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}, "sort": "EXPECTED_START_TIME_ASC"}
        )

    def task_runs_settled(
        self, run_id: str, run_count: int, expected: int, timeout: float = 60
    ) -> list[dict[str, Any]]:
        """The task runs of one attempt of a flow run once ``expected`` of them are in a final state: the server learns
        of task runs from events, a moment after the flow run itself has finished."""
        deadline = time.monotonic() + timeout
        while True:
            runs = [t for t in self.task_runs(run_id) if t["flow_run_run_count"] == run_count]
            final = [t for t in runs if t["state_type"] in TERMINAL]
            if (len(final) >= expected and len(final) == len(runs)) or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)

    def explain(self, run: dict[str, Any]) -> str:
        """A failure report: the run's state, its logs and the tail of every process log."""
        state = run.get("state") or {}
        return (
            f"run {run['name']} ({run['id']}) of deployment {run.get('deployment_id')}: {run['state_type']} "
            f"{state.get('message')}\n--- run logs ---\n{self.run_logs(run['id'])}\n{self.process_logs()}"
        )


@pytest.fixture(scope="session")
def prefect_stack() -> Iterator[PrefectStack]:
    """Server, pools, deployments and workers, shared by every e2e test of the session."""
    root = Path(tempfile.mkdtemp(prefix="medtune-e2e-"))
    stack = PrefectStack(root)
    py = sys.executable
    try:
        stack.start("server", py, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(stack.port))
        stack.wait_healthy()
        medtune = Path(py).with_name("medtune")
        cmd = [str(medtune)] if medtune.exists() else [py, "-m", "flows.cli"]
        deploy = subprocess.run(
            [*cmd, "deploy"], cwd=REPO, env=stack.env, capture_output=True, text=True, timeout=300, check=False
        )
        assert deploy.returncode == 0, f"medtune deploy failed:\n{deploy.stdout[-3000:]}\n{deploy.stderr[-3000:]}"
        for pool in ("medtune-cpu", "medtune-cuda"):
            stack.start(f"worker-{pool}", py, "-m", "prefect", "worker", "start", "--pool", pool)
        yield stack
    finally:
        stack.stop_all()
        shutil.rmtree(root, ignore_errors=True)
