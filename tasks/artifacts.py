"""Prefect artifacts medtune publishes: tables, markdown reports, progress, images as links."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


def artifact_key(text: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100]


def publish_table(key: str, rows: Sequence[Mapping[str, Any]], description: str = "") -> None:
    create_table_artifact(key=artifact_key(key), table=[dict(r) for r in rows], description=description)


def publish_markdown(key: str, markdown: str, description: str = "") -> None:
    create_markdown_artifact(key=artifact_key(key), markdown=markdown, description=description)


class Progress:
    """A progress artifact updated as work completes (shown live in the UI)."""

    def __init__(self, description: str, total: int) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.id = create_progress_artifact(progress=0.0, description=description)

    def advance(self, n: int = 1) -> None:
        self.done += n
        update_progress_artifact(self.id, progress=min(100.0, 100.0 * self.done / self.total))
