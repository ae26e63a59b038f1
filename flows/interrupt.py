"""Ctrl-C and SIGTERM on ``medtune run``: the run ends Cancelled, its remote work is cancelled, the CLI leaves quickly.

:class:`CancelOnSignal` turns the first SIGINT or SIGTERM into :class:`RunInterrupted` raised in the flow's thread.
It is a ``KeyboardInterrupt``: ``except Exception`` blocks let it through, and code that owns remote work cleans up
on it the way it would on Ctrl-C (a Bailian fine-tune job being waited for is cancelled on Bailian). Prefect records
the run as Crashed on the way out; :func:`mark_cancelled` then sets the run and its unfinished task runs Cancelled.
A watchdog makes sure the process leaves within ``grace_s`` even when a worker thread is stuck in a request; a
second signal leaves at once.

:func:`ephemeral_server` starts the ephemeral Prefect server (when no ``PREFECT_API_URL`` is set) with SIGINT
blocked in the server process (not in the CLI, which stays interruptible while the server starts), so a Ctrl-C typed
in the terminal, which reaches the whole process group, does not stop the server before the run's Cancelled state is
written to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any
from uuid import UUID

log = logging.getLogger("medtune")

#: The signals a user or a supervisor sends to stop a run.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by a signal (``signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (130 for Ctrl-C)."""
    return 128 + signum


class CancelOnSignal:
    """While active (main thread only): the first stop signal raises :class:`RunInterrupted` in the flow.

    ``on_timeout`` runs on a watchdog thread when the CLI has not called :meth:`finished` ``grace_s`` after the
    signal; it must print what the user needs and leave the process (``os._exit``).
    """

    def __init__(self, on_timeout: Callable[[CancelOnSignal], None], grace_s: float = 6.0) -> None:
        self.on_timeout = on_timeout
        self.grace_s = grace_s
        self.signum: int | None = None
        self.flow_run_id: UUID | None = None
        self._previous: dict[int, Any] = {}
        self._done = threading.Event()

    def __enter__(self) -> CancelOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    @property
    def cancelled(self) -> bool:
        return self.signum is not None

    def remember_run(self, flow: object, flow_run: Any, state: object) -> None:
        """An ``on_running`` hook: the run's id, known before any signal can arrive."""
        self.flow_run_id = flow_run.id

    def stopped_by(self, signum: int) -> None:
        """Prefect's own SIGTERM handling got there first (it raises ``TerminationSignal``): record it here."""
        if self.signum is None:
            self.signum = signum
            threading.Thread(target=self._watchdog, name="medtune-cancel-watchdog", daemon=True).start()

    def finished(self) -> None:
        """The CLI has reported the cancellation: the watchdog stands down."""
        self._done.set()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # a second Ctrl-C: do not wait for the clean-up
            self.on_timeout(self)
            return
        self.signum = signum
        self.flow_run_id = self.flow_run_id or current_flow_run_id()
        log.warning("%s: cancelling the run", signal.Signals(signum).name)
        threading.Thread(target=self._watchdog, name="medtune-cancel-watchdog", daemon=True).start()
        _cancel_submitted_tasks()
        raise RunInterrupted(signum)

    def _watchdog(self) -> None:
        if not self._done.wait(self.grace_s):
            self.on_timeout(self)


def current_flow_run_id() -> UUID | None:
    """The flow run this thread is inside (the signal handler runs in the flow's thread)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow_run.id if ctx is not None and ctx.flow_run is not None else None


def _cancel_submitted_tasks() -> None:
    """Tell the flow's task runner to drop queued tasks and signal running ones (what Prefect does on cancel)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx is not None else None
    if runner is not None and hasattr(runner, "cancel_all"):
        with contextlib.suppress(Exception):
            runner.cancel_all()


def mark_cancelled(flow_run_id: UUID, reason: str) -> str:
    """Set the flow run and its unfinished task runs Cancelled (forced: Prefect has recorded a crash); returns
    the run's state type as the server now has it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        for task_run in client.read_task_runs(flow_run_filter=run_filter):
            if task_run.state is None or not task_run.state.is_final():
                with contextlib.suppress(Exception):
                    client.set_task_run_state(task_run.id, Cancelled(message=reason), force=True)
        client.set_flow_run_state(flow_run_id, Cancelled(message=reason), force=True)
        return client.read_flow_run(flow_run_id).state.type.value


@contextlib.contextmanager
def ephemeral_server() -> Iterator[None]:
    """Start Prefect's ephemeral server now, with SIGINT blocked in it, unless ``PREFECT_API_URL`` names a server."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or threading.current_thread() is not threading.main_thread():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect's clients use in ephemeral mode
    log_path = server_log_path()
    failed: list[BaseException] = []

    def start() -> None:  # on a thread that blocks SIGINT: the server process inherits the mask
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        launch = getattr(server, "_run_uvicorn_command", None)
        if launch is not None and not server.running:
            server._run_uvicorn_command = lambda: _with_stderr_to(log_path, launch)
        try:
            server.start()  # its stop() uses SIGTERM
        except BaseException as exc:
            failed.append(exc)

    starting = threading.Thread(target=start, name="medtune-ephemeral-server", daemon=True)
    starting.start()
    while starting.is_alive():  # the main thread keeps taking signals while the server starts
        starting.join(0.2)
    if failed:
        raise RuntimeError(f"the ephemeral Prefect server did not start ({failed[0]}); its log: {log_path}")
    yield


def server_log_path() -> Path:
    """Where the ephemeral server's own output goes (``PREFECT_HOME/ephemeral-server.log``): its shutdown logs
    tracebacks of events it was still flushing, which are Prefect's housekeeping, not the run's outcome."""
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home) / "ephemeral-server.log"


def _with_stderr_to(path: Path, launch: Callable[[], Any]) -> Any:
    """``launch()`` (which starts the server process) with file descriptor 2 pointing at ``path``: the child
    keeps that stderr; this process gets its own back as soon as the child exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as log_file:
        os.dup2(log_file.fileno(), 2)
        try:
            return launch()
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def stop_ephemeral_server() -> None:
    """Stop the ephemeral server, if this process started one (before ``os._exit``, which skips atexit)."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer._instances.get(None)
    if server is not None:
        with contextlib.suppress(Exception):
            server.stop()


def leave_now(code: int) -> None:
    """Flush what was printed, stop the server this process started, exit without waiting for worker threads."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    stop_ephemeral_server()
    os._exit(code)
