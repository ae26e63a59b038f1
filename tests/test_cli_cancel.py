"""Ctrl-C on ``medtune run``: the run is marked Cancelled in the Prefect database, remote work the run owns is
cancelled, the summary line says CANCELLED, and the process leaves within 10 s even while a request is still out.

Ctrl-C is sent the way a terminal sends it, to the whole process group (``medtune`` and the ephemeral Prefect
server it started); SIGTERM the way a supervisor sends it, to the process.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fakes.dashscope_server import FakeDashScope
from tests.fakes.openai_server import FakeOpenAIServer
from tests.test_bailian_flow import KEY, medqa_tree

REPO = Path(__file__).resolve().parent.parent
LEAVE_WITHIN_S = 10.0


def _start(tmp_path: Path, flow: str, sets: list[str], **env: str) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect"), MEDTUNE_HOME=str(tmp_path / "home"))
    cmd = [sys.executable, "-m", "flows.cli", "run", flow]
    for arg in sets:
        cmd += ["--set", arg]
    return subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a command typed in a terminal
    )


def _interrupt(proc: subprocess.Popen[str], signum: int, busy: Callable[[], bool]) -> tuple[str, str, float]:
    """Wait until ``busy()`` (remote work is out), send ``signum``, return stdout, stderr and seconds to leave."""
    try:
        deadline = time.monotonic() + 240
        while not busy():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the flow never reached its remote work"
            time.sleep(0.2)
        sent = time.monotonic()
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
        else:
            proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        return out, err, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def _check_cancelled(tmp_path: Path, proc: subprocess.Popen[str], out: str, err: str, took: float, signum: int) -> Any:
    assert took < LEAVE_WITHIN_S, f"left {took:.1f} s after the signal"
    assert proc.returncode == 128 + signum, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["state"] == "CANCELLED", summary
    assert signal.Signals(signum).name in summary["error"]
    assert "Traceback" not in err, err[-3000:]
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        (state,) = db.execute("SELECT state_type FROM flow_run WHERE id = ?", (summary["flow_run_id"],)).fetchone()
        unfinished = db.execute(
            "SELECT count(*) FROM task_run WHERE flow_run_id = ? AND state_type IN ('RUNNING', 'PENDING')",
            (summary["flow_run_id"],),
        ).fetchone()[0]
    assert state == "CANCELLED"
    assert unfinished == 0
    return summary


def test_sigterm_cancels_the_run_and_prints_the_summary(tmp_path: Path) -> None:
    signum = signal.SIGTERM
    # every answer takes 60 s: when the signal comes, an embeddings request is out and a task is running
    with FakeOpenAIServer(latency_s=60.0) as server:
        sets = ["backend=openai-api", "model=fake-embedding", f"base_url={server.base_url}", "output_dir=out"]
        proc = _start(tmp_path, "eval-driven-recall", sets, OPENAI_API_KEY="sk-test")
        out, err, took = _interrupt(proc, signum, lambda: server.total > 0)
    summary = _check_cancelled(tmp_path, proc, out, err, took, signum)
    assert summary["flow"] == "eval-driven-recall"


def test_ctrl_c_cancels_the_bailian_job_the_run_started(tmp_path: Path) -> None:
    with FakeDashScope(api_key=KEY, polls_per_state=10_000) as server:  # the job stays RUNNING
        sets = [
            f"source_dir={medqa_tree(tmp_path / 'MedQA')}",
            "regions=[mainland, us]",
            "dry_run=false",
            "min_training_rows=1",
            f"base_url={server.base_url}",
            f"registry={tmp_path / 'registry.json'}",
            "poll_interval_s=0.5",
            "output_dir=out",
        ]
        proc = _start(tmp_path, "bailian-upload", sets, DASHSCOPE_API_KEY=KEY)
        out, err, took = _interrupt(proc, signal.SIGINT, lambda: bool(server.jobs))
        cancels = [r for r in server.calls("POST") if r.path.endswith("/cancel")]
    _check_cancelled(tmp_path, proc, out, err, took, signal.SIGINT)
    assert len(cancels) == 1, [r.path for r in server.requests]
    assert [job.output["status"] for job in server.jobs.values()] == ["CANCELED"]
