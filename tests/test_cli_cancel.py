"""Ctrl-C on ``medtune run``: the run is marked Cancelled in the Prefect database, the summary line says so, the
process leaves within 10 s even while a remote request is still out."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.openai_server import FakeOpenAIServer

REPO = Path(__file__).resolve().parent.parent
LEAVE_WITHIN_S = 10.0


def _start(tmp_path: Path, base_url: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect"), OPENAI_API_KEY="sk-test")
    env["MEDTUNE_HOME"] = str(tmp_path / "home")
    args = ["backend=openai-api", "model=fake-embedding", f"base_url={base_url}", f"output_dir={tmp_path / 'out'}"]
    cmd = [sys.executable, "-m", "flows.cli", "run", "eval-driven-recall"]
    for arg in args:
        cmd += ["--set", arg]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_cancels_the_run_and_prints_the_summary(tmp_path: Path, signum: int) -> None:
    # every answer takes 60 s: when the signal comes, an embeddings request is out and a task is running
    with FakeOpenAIServer(latency_s=60.0) as server:
        proc = _start(tmp_path, server.base_url)
        try:
            deadline = time.monotonic() + 240
            while server.total == 0:
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "the flow never sent a request"
                time.sleep(0.2)
            sent = time.monotonic()
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert took < LEAVE_WITHIN_S, f"left {took:.1f} s after the signal"
    assert proc.returncode == 128 + signum, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["state"] == "CANCELLED" and summary["flow"] == "eval-driven-recall", summary
    assert signal.Signals(signum).name in summary["error"]
    assert "Traceback" not in err, err[-3000:]
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        (state,) = db.execute("SELECT state_type FROM flow_run WHERE id = ?", (summary["flow_run_id"],)).fetchone()
        running = db.execute(
            "SELECT count(*) FROM task_run WHERE flow_run_id = ? AND state_type IN ('RUNNING', 'PENDING')",
            (summary["flow_run_id"],),
        ).fetchone()[0]
    assert state == "CANCELLED"
    assert running == 0
