"""Prefect artifacts medtune publishes: tables, markdown reports, charts and one progress bar per run.

* Tables go through :func:`readable`: floats rounded to :data:`SIGNIFICANT` significant digits (``3.157``, not
  ``3.15712571144104``; ``0.0001235``, not ``0``), so every flow's tables read the same way.
* Charts are PNG files on the worker's disk, which nobody in the UI can open: :func:`publish_image` embeds the image
  in a markdown artifact as a ``data:`` URI, so it displays on the run's page wherever the worker ran.
* :class:`Progress` keeps one progress artifact per flow run under a stable key: a retried run (same flow run, new
  attempt) moves the existing bar back and on, instead of leaving the killed attempt's bar beside a new one.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

#: Significant digits a float keeps in a published table or report.
SIGNIFICANT = 4
#: Largest chart embedded in an artifact (bytes of PNG); a bigger one is linked by path instead.
MAX_IMAGE_BYTES = 2_000_000


def artifact_key(text: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100]


def round_float(value: float, digits: int = SIGNIFICANT) -> float:
    """``value`` to ``digits`` significant digits (integers stay exact; nan and inf as they are)."""
    if not math.isfinite(value) or value == 0 or (value == int(value) and abs(value) < 10**digits):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def readable(value: Any, digits: int = SIGNIFICANT) -> Any:
    """``value`` with every float inside (dicts, lists, tuples) rounded by :func:`round_float`."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return round_float(value, digits)
    if isinstance(value, Mapping):
        return {k: readable(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [readable(v, digits) for v in value]
    return value


def format_number(value: Any, digits: int = SIGNIFICANT) -> str:
    """A number as text for markdown tables: ``3.157``, ``1,234,567``, ``0.0001235``; anything else as ``str``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 1e15):
        return f"{int(value):,}"
    return f"{round_float(value, digits):g}"


def publish_table(key: str, rows: Sequence[Mapping[str, Any]], description: str = "") -> None:
    """A table artifact, floats rounded (:func:`readable`)."""
    create_table_artifact(key=artifact_key(key), table=[readable(dict(r)) for r in rows], description=description)


def publish_markdown(key: str, markdown: str, description: str = "") -> None:
    create_markdown_artifact(key=artifact_key(key), markdown=markdown, description=description)


def image_markdown(png: Path, alt: str) -> str:
    """``![alt](data:image/png;base64,...)`` for a PNG small enough to embed, else a line naming its path."""
    data = png.read_bytes()
    if len(data) > MAX_IMAGE_BYTES:
        return f"*{alt}: chart too large to embed ({len(data):,} bytes), see `{png}`*"
    alt = alt.replace("[", "(").replace("]", ")")
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode('ascii')})"


def publish_image(key: str, png: str | Path, title: str, text: str = "", description: str = "") -> None:
    """A chart that displays in the UI: ``title``, the image embedded, ``text`` under it and the file's path."""
    path = Path(png)
    parts = [f"### {title}", image_markdown(path, title) if path.is_file() else f"*{title}: `{path}` is missing*"]
    if text:
        parts.append(text)
    parts.append(f"File: `{path}`")
    publish_markdown(key, "\n\n".join(parts), description or title)


class Progress:
    """The run's progress bar (shown live in the UI), one per flow run and ``key``, reused by a retried attempt."""

    def __init__(self, description: str, total: int, key: str | None = None) -> None:
        from prefect.runtime import flow_run

        self.total = max(total, 1)
        self.done = 0
        self.key = artifact_key(key or f"{flow_run.get_flow_name() or 'medtune'}-progress")
        self.id = _existing_progress(self.key, flow_run.get_id())
        if self.id is None:
            self.id = create_progress_artifact(progress=0.0, key=self.key, description=description)
        else:
            update_progress_artifact(self.id, progress=0.0, description=description)

    def advance(self, n: int = 1) -> None:
        self.done += n
        update_progress_artifact(self.id, progress=min(100.0, 100.0 * self.done / self.total))


def _existing_progress(key: str, flow_run_id: str | None) -> Any:
    """The id of this flow run's progress artifact ``key`` from an earlier attempt, or None."""
    if flow_run_id is None:
        return None
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        ArtifactFilterType,
    )

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                type=ArtifactFilterType(any_=["progress"]),
            ),
            limit=1,
        )
    return found[0].id if found else None
