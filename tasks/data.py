"""Dataset tasks: validate and convert files, cached by their contents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger

from medtune_core.dataio import DatasetReader, Manifest, Policy, convert_file, rejects_path_for
from tasks.base import medtune_task


@medtune_task
def validate_dataset(path: Path, fmt: str | None = None, policy: Policy = Policy.STRICT) -> dict[str, Any]:
    """Read every row of ``path``; strict raises on the first bad row, skip counts them."""
    reader = DatasetReader(path, fmt, policy=policy)
    for _ in reader:
        pass
    stats = reader.stats.as_dict()
    get_run_logger().info(
        "%s: %d rows, format %s, %d rejected", path, stats["rows"], reader.format.name, stats["rejected"]
    )
    return {"path": str(path), "format": reader.format.name, "kind": reader.format.kind.value, **stats}


@medtune_task
def convert_dataset(src: Path, dst: Path, to: str, policy: Policy = Policy.STRICT) -> Manifest:
    """Convert ``src`` into format ``to`` at ``dst`` (atomic, with a manifest and, under skip, a rejects file)."""
    manifest = convert_file(src, dst, to, policy=policy)
    if policy is Policy.SKIP and manifest.rejects and manifest.rejects["count"]:
        get_run_logger().warning("%s: %d rows rejected, see %s", src, manifest.rejects["count"], rejects_path_for(dst))
    return manifest
