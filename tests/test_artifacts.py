"""Artifacts people can read: one progress bar per run (a retried attempt reuses it), rounded floats in tables,
charts embedded so that the UI shows them wherever the worker ran."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from prefect import flow

from tasks.artifacts import Progress, format_number, publish_image, publish_table, readable

ATTEMPTS: list[int] = []


@flow(name="artifacts-retried", retries=1, retry_delay_seconds=0)
def retried_flow() -> str:
    """The first attempt dies at half way (as a killed worker's run would); the retry finishes."""
    progress = Progress("work", 4)
    progress.advance(2)
    ATTEMPTS.append(1)
    if len(ATTEMPTS) == 1:
        raise RuntimeError("worker lost")
    progress.advance(2)
    return "done"


@flow(name="artifacts-tables-and-charts")
def tables_and_charts(png: str) -> None:
    publish_table("loss-table", [{"stage": "1-sft", "loss": 3.15712571144104, "steps": 3, "tiny": 0.000123456789}])
    publish_image("loss-curve-1-sft", png, "Loss curve of 1-sft", "3 steps")


def _artifacts(flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def test_a_retried_run_keeps_one_progress_bar(prefect_harness: None) -> None:
    ATTEMPTS.clear()
    state = retried_flow(return_state=True)
    assert state.is_completed() and len(ATTEMPTS) == 2
    progress = [a for a in _artifacts(state.state_details.flow_run_id) if a.type == "progress"]
    assert len(progress) == 1, [(a.key, a.data) for a in progress]
    assert progress[0].key == "artifacts-retried-progress" and float(progress[0].data) == 100.0


def test_tables_round_floats_and_charts_are_embedded(prefect_harness: None, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([3.2, 2.9, 2.5])
    png = tmp_path / "loss_curve.png"
    fig.savefig(png)
    plt.close(fig)

    state = tables_and_charts(str(png), return_state=True)
    assert state.is_completed()
    found = {a.key: a for a in _artifacts(state.state_details.flow_run_id)}
    table = found["loss-table"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert rows[0]["loss"] == 3.157 and rows[0]["steps"] == 3 and rows[0]["tiny"] == 0.0001235
    chart = found["loss-curve-1-sft"].data
    assert "![Loss curve of 1-sft](data:image/png;base64," in chart
    encoded = chart.split("data:image/png;base64,", 1)[1].split(")", 1)[0]
    assert base64.b64decode(encoded) == png.read_bytes()


def test_number_formatting() -> None:
    assert readable({"a": [0.333333333, 2.0], "b": True, "c": "x"}) == {"a": [0.3333, 2.0], "b": True, "c": "x"}
    assert format_number(3.15712571144104) == "3.157"
    assert format_number(1234567) == "1,234,567"
    assert format_number(None) == ""
