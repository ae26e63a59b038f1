"""The nightly schedule on a real Prefect server with its scheduler service on (``tests/e2e_server.py``).

``medtune deploy`` deploys ``data-synthesis/nightly`` with its cron; the server's scheduler must create its
upcoming runs at once (with SQLAlchemy 2.1 it raised on every loop and created none), with the nightly's
parameters; the documented ``prefect deployment schedule pause`` stops it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pytest

if TYPE_CHECKING:
    from tests.e2e_server import PrefectStack

pytest_plugins = ["tests.e2e_server"]
pytestmark = pytest.mark.e2e

NIGHTLY_PARAMS = {
    "params": {"mode": "template", "sizes": "minimum", "seed": None, "output_dir": "out/data-synthesis/nightly"}
}


def scheduled_runs(stack: PrefectStack, deployment_id: str) -> list[dict]:
    body = {
        "deployments": {"id": {"any_": [deployment_id]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        "sort": "EXPECTED_START_TIME_ASC",
    }
    return stack.post("/flow_runs/filter", body)


def test_the_nightly_cron_creates_its_runs_with_its_parameters_and_pauses(prefect_stack: PrefectStack) -> None:
    stack = prefect_stack
    nightly = stack.deployments()["data-synthesis/nightly"]
    assert nightly["parameters"] == NIGHTLY_PARAMS
    assert nightly["work_pool_name"] == "medtune-cpu"
    [schedule] = nightly["schedules"]
    assert schedule["active"] is True
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "Asia/Shanghai"

    deadline = stack.deployed_at + 60  # within a minute of the deployment
    runs = scheduled_runs(stack, nightly["id"])
    while not runs and time.time() < deadline:
        time.sleep(2)
        runs = scheduled_runs(stack, nightly["id"])
    assert runs, f"the scheduler created no run of the nightly deployment in 60 s:\n{stack.process_logs()}"
    assert "bulk DML" not in stack.process_logs()
    for run in runs:
        start = datetime.fromisoformat(run["expected_start_time"]).astimezone(ZoneInfo("Asia/Shanghai"))
        assert (start.hour, start.minute) == (2, 0), run["expected_start_time"]
        assert run["parameters"] == NIGHTLY_PARAMS
        assert run["auto_scheduled"] is True
        created = datetime.fromisoformat(run["created"]).timestamp()
        assert created - stack.deployed_at < 60, "created within a minute of the deployment"
    days = [datetime.fromisoformat(r["expected_start_time"]).date() for r in runs]
    assert len(set(days)) == len(days) >= 1, "one run a night"

    # docs/OPERATIONS.md: pause the nightly with `prefect deployment schedule pause <deployment> <schedule id>`
    pause = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "schedule", "pause", "data-synthesis/nightly", schedule["id"]],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pause.returncode == 0, pause.stdout + pause.stderr
    [paused] = stack.get(f"/deployments/{nightly['id']}")["schedules"]
    assert paused["active"] is False
    deadline = time.monotonic() + 30
    while scheduled_runs(stack, nightly["id"]) and time.monotonic() < deadline:
        time.sleep(1)
    assert scheduled_runs(stack, nightly["id"]) == [], "a paused schedule leaves no upcoming run"
