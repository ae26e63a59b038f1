"""A real Prefect server for the end-to-end tests: ``prefect server start`` + ``medtune deploy`` + process workers.

Loaded as a pytest plugin (``pytest_plugins = ["tests.e2e_server"]`` in each e2e module), so the
session-scoped ``prefect_stack`` fixture is ONE server shared by every e2e module of the run, started on first
use and torn down (whole process groups) at the end of the session.

The stack: ``prefect server start`` on 127.0.0.1 on a free port (SQLite under a temporary ``PREFECT_HOME``) with
the services an operator relies on: the scheduler (the nightly cron creates its runs) and the triggers (the crash
automation of ``medtune deploy``); ``medtune deploy`` against it (pools ``medtune-cpu`` / ``medtune-cuda``, every
deployment of ``deployments/prefect.yaml``, the crash automation), and one process worker per pool. Flow runs get
a temporary ``MEDTUNE_HOME`` (results, caches) but the test session's ``MEDTUNE_MODELS_DIR`` (models materialised
once per machine). Nothing but ``MEDTUNE_HOME`` tells a flow run where its results go (the run's own process
applies medtune's settings), and :meth:`PrefectStack.machine_env` builds a second "machine" (its own homes and
folders) for the multi-worker tests.

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
#: Seconds without a heartbeat before medtune's automation marks a run Crashed (heartbeats every 30 s here). Two
#: missed beats and some slack: one heartbeat held up by a busy 2-core machine or a locked SQLite database (the
#: server answers 503 to concurrent writes) must not crash a live training run.
CRASH_AFTER_S = 80
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
        self.deployed_at = 0.0
        self.crash_after_s = CRASH_AFTER_S

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.prefect_home),
            PREFECT_API_URL=self.api_url,
            PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{self.prefect_home / 'prefect.db'}",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            # Services the tests never exercise: each one is another SQLite writer on a 2-core CI machine.
            PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
            PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED="false",
            PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED="false",
            PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED="false",
            PREFECT_SERVER_LOG_RETRYABLE_ERRORS="true",
            PREFECT_API_DATABASE_TIMEOUT="30",
            PREFECT_LOGGING_LEVEL="INFO",
            # Prefect's shortest heartbeat; a run silent for CRASH_AFTER_S is Crashed by medtune's automation.
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",
            MEDTUNE_CRASH_AFTER_S=str(CRASH_AFTER_S),
            PREFECT_WORKER_QUERY_SECONDS="2",
            PREFECT_WORKER_PREFETCH_SECONDS="5",
            MEDTUNE_HOME=str(self.medtune_home),
            MEDTUNE_MODELS_DIR=os.environ["MEDTUNE_MODELS_DIR"],
            MEDTUNE_CHECKOUT=str(REPO),
            MEDTUNE_E2E_STACK=str(self.root),
            PYTHONUNBUFFERED="1",
        )
        for key in ("MEDTUNE_RESULT_STORAGE", "MEDTUNE_SHARED_DIR", "MEDTUNE_CUDA_START_TIMEOUT_S"):
            env.pop(key, None)
        return env

    def machine_env(self, name: str, **extra: str) -> tuple[dict[str, str], Path]:
        """The environment and working folder of another "machine": its own ``PREFECT_HOME``, ``MEDTUNE_HOME``
        and folder, the same server (and ``extra``, e.g. the shared storage block and location)."""
        base = self.root / "machines" / name
        work = base / "work"
        for d in (base / "prefect-home", base / "medtune-home", work):
            d.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in self.env.items() if k != "PREFECT_API_DATABASE_CONNECTION_URL"}
        env.update(PREFECT_HOME=str(base / "prefect-home"), MEDTUNE_HOME=str(base / "medtune-home"), **extra)
        return env, work

    # ------------------------------------------------------------------------------------------ processes

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None, cwd: Path = REPO
    ) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                args, cwd=cwd, env=env or self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
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

    def stray_pids(self, *markers: str) -> list[int]:
        """Processes whose environment has this stack's MEDTUNE_E2E_STACK (only ever started by this stack) and
        every one of ``markers`` (``KEY=value``)."""
        wanted = {f"MEDTUNE_E2E_STACK={self.root}".encode(), *(m.encode() for m in markers)}
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if wanted <= set((entry / "environ").read_bytes().split(b"\0")):
                        pids.append(int(entry.name))
        return pids

    def worker(self, name: str, pool: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> None:
        """``prefect worker start --pool POOL`` as process ``name``."""
        self.start(name, sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, env=env, cwd=cwd)

    def kill9(self, name: str, *markers: str) -> None:
        """``kill -9`` process ``name`` and the processes it started (flow runs live in sessions of their own and
        are found by ``markers``, e.g. ``MEDTUNE_HOME=...`` of that "machine"): the machine died."""
        proc, _ = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in self.stray_pids(*markers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()

    def python(self, code: str, env: dict[str, str] | None = None) -> str:
        """Run ``code`` in a Python process with the stack's (or ``env``) environment; returns its stdout."""
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env or self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

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
        """One API call, retried on 429/502/503 and on a read timeout, with backoff as Prefect's own client does.

        A SQLite-backed server answers 503 while another writer holds the database, or nothing for a while when the
        machine is busy (2-core CI machines training a model next to it). Only reads are retried after a timeout:
        a POST that timed out may have been applied.
        """
        delay = 0.5
        for attempt in range(RETRIES):
            try:
                r = self.http.request(method, path, json=body)
            except httpx.TimeoutException:
                if attempt == RETRIES - 1 or not (method == "GET" or path.endswith("/filter")):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
                continue
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

    def run_deployment(
        self, deployment: dict[str, Any], parameters: dict[str, Any], job_variables: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Create a flow run exactly as the UI's Run dialog does (Custom run: with ``job_variables``)."""
        body: dict[str, Any] = {"parameters": parameters, "enforce_parameter_schema": True, "state": UI_RUN_STATE}
        if job_variables is not None:
            body["job_variables"] = job_variables
        return self.post(f"/deployments/{deployment['id']}/create_flow_run", body)

    def copy_deployment(self, deployment: dict[str, Any], name: str, pool: str) -> dict[str, Any]:
        """``deployment`` again as ``name`` on work pool ``pool`` (created like ``medtune deploy`` makes its own,
        from the process worker's template), so that a test's runs go only to that test's workers."""
        template = self.get("/work_pools/medtune-cpu")["base_job_template"]
        r = self.http.post("/work_pools/", json={"name": pool, "type": "process", "base_job_template": template})
        assert r.status_code in (201, 409), r.text
        keys = (
            "flow_id",
            "entrypoint",
            "pull_steps",
            "parameter_openapi_schema",
            "parameters",
            "job_variables",
            "path",
        )
        body = {k: deployment[k] for k in keys}
        body.update(name=name, work_pool_name=pool, work_queue_name="default", enforce_parameter_schema=True)
        return self.get(f"/deployments/{self.post('/deployments/', body)['id']}")

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
        stack.deployed_at = time.time()
        medtune = Path(py).with_name("medtune")
        cmd = [str(medtune)] if medtune.exists() else [py, "-m", "flows.cli"]
        deploy = subprocess.run(
            [*cmd, "deploy"], cwd=REPO, env=stack.env, capture_output=True, text=True, timeout=300, check=False
        )
        assert deploy.returncode == 0, f"medtune deploy failed:\n{deploy.stdout[-3000:]}\n{deploy.stderr[-3000:]}"
        for pool in ("medtune-cpu", "medtune-cuda"):
            stack.worker(f"worker-{pool}", pool)
        yield stack
    finally:
        stack.stop_all()
        shutil.rmtree(root, ignore_errors=True)
