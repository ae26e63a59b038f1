"""Reading a flow run's task-run states from the Prefect API, for flow tests.

Prefect reports task-run states to the server asynchronously, so a read right after the flow returns may still see
Pending: ``task_states`` polls until every task run (at least ``expected`` of them) has a final state.
"""

from __future__ import annotations

import time
from uuid import UUID

NOT_FINAL = ("?", "Pending", "Running", "Scheduled")


def _task_states_now(flow_run_id: UUID) -> dict[str, list[str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
    states: dict[str, list[str]] = {}
    for r in runs:
        name = r.state_name or (r.state.name if r.state else "?")
        states.setdefault(r.name.rsplit("-", 1)[0], []).append(name)
    return states


def task_states(flow_run_id: UUID, expected: int = 0, timeout_s: float = 60.0) -> dict[str, list[str]]:
    """State names of a flow run's task runs, by task name, once they are final (or ``timeout_s`` passed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = _task_states_now(flow_run_id)
        names = [n for v in states.values() for n in v]
        if (len(names) >= expected and not any(n in NOT_FINAL for n in names)) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)
