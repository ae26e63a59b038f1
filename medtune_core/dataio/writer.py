"""Dataset writing: atomic files in any registered format, each with a manifest beside it.

The manifest (``<file>.manifest.json``) says what the file is (format, kind, rows, sha256, size), where it
came from (source files and their hashes) and what was left out (rejects). Tasks pass manifests between
each other instead of data, and cache keys use their hashes.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medtune_core.dataio.atomic import atomic_write, atomic_write_text
from medtune_core.dataio.reader import DatasetReader, Policy
from medtune_core.formats import Record, RecordFormat, get_format, to_kind
from medtune_core.hashing import file_sha256

MANIFEST_SUFFIX = ".manifest.json"


def manifest_path(data_path: str | os.PathLike[str]) -> Path:
    p = Path(data_path)
    return p.with_name(p.name + MANIFEST_SUFFIX)


def rejects_path_for(data_path: str | os.PathLike[str]) -> Path:
    p = Path(data_path)
    return p.with_name(p.name + ".rejects.jsonl")


@dataclass
class Manifest:
    """What a written dataset file holds and where it came from."""

    path: str
    format: str
    kind: str
    rows: int
    sha256: str
    bytes: int
    sources: list[dict[str, Any]] = field(default_factory=list)
    rejects: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self) -> Path:
        target = manifest_path(self.path)
        atomic_write_text(target, json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n")
        return target

    @classmethod
    def load(cls, data_path: str | os.PathLike[str]) -> Manifest:
        return cls(**json.loads(manifest_path(data_path).read_text(encoding="utf-8")))

    def is_current(self) -> bool:
        """Whether the data file still has the contents this manifest describes."""
        p = Path(self.path)
        return p.is_file() and p.stat().st_size == self.bytes and file_sha256(p) == self.sha256


class DatasetWriter:
    """Context manager writing canonical records in one format; the file appears only on success."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fmt: str | RecordFormat,
        *,
        sources: Iterable[dict[str, Any]] = (),
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.format = get_format(fmt) if isinstance(fmt, str) else fmt
        self.sources = list(sources)
        self.extra = dict(extra or {})
        self.rows = 0
        self.manifest: Manifest | None = None
        self._ctx: Any = None

    def __enter__(self) -> DatasetWriter:
        self._ctx = atomic_write(self.path)
        self._fh = self._ctx.__enter__()
        if self.format.container == "csv":
            self._csv = csv.DictWriter(self._fh, fieldnames=self.format.fieldnames(), lineterminator="\n")
            self._csv.writeheader()
        return self

    def write(self, record: Record) -> None:
        row = self.format.dump(to_kind(record, self.format.kind))
        if self.format.container == "csv":
            self._csv.writerow(row)
        elif self.format.container == "txt":
            self._fh.write(row + "\n")
        else:
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows += 1

    def write_all(self, records: Iterable[Record]) -> None:
        for record in records:
            self.write(record)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._ctx.__exit__(exc_type, exc, tb)
        if exc_type is None:
            self.manifest = Manifest(
                path=str(self.path),
                format=self.format.name,
                kind=self.format.kind.value,
                rows=self.rows,
                sha256=file_sha256(self.path),
                bytes=self.path.stat().st_size,
                sources=self.sources,
                rejects=self.extra.pop("rejects", None),
                extra=self.extra,
            )
            self.manifest.save()
        return False


def write_records(
    path: str | os.PathLike[str],
    records: Iterable[Record],
    fmt: str | RecordFormat,
    *,
    sources: Iterable[dict[str, Any]] = (),
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Write ``records`` atomically in ``fmt`` and return the saved manifest."""
    with DatasetWriter(path, fmt, sources=sources, extra=extra) as writer:
        writer.write_all(records)
    assert writer.manifest is not None
    return writer.manifest


def source_entry(reader: DatasetReader) -> dict[str, Any]:
    """A manifest's description of one input file after it was read."""
    return {
        "path": str(reader.path),
        "sha256": file_sha256(reader.path),
        "format": reader.format.name,
        **reader.stats.as_dict(),
    }


def convert_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    to: str,
    *,
    src_format: str | None = None,
    policy: Policy | str = Policy.STRICT,
) -> Manifest:
    """Convert one file into another format. Under ``skip`` the bad rows go to ``<dst>.rejects.jsonl``."""
    policy = Policy(policy)
    rejects = rejects_path_for(dst) if policy is Policy.SKIP else None
    reader = DatasetReader(src, src_format, policy=policy, rejects_path=rejects)
    with DatasetWriter(dst, to) as writer:
        writer.write_all(reader)
        writer.sources = [source_entry(reader)]
        if rejects is not None:
            writer.extra["rejects"] = {"count": reader.stats.rejected, "path": str(rejects)}
    assert writer.manifest is not None
    return writer.manifest
