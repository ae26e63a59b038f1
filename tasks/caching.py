"""Cache policies whose keys follow file *contents*, the task's source and the other inputs.

Prefect's ``INPUTS`` hashes a ``Path`` as its string, so a file changed in place would serve a stale result,
and two different tasks with equal arguments would share one. :data:`CONTENT_AWARE` fixes both: file and
folder inputs hash as their location *and* contents, manifests as their recorded sha256, and the task's own source (plus
the medtune version, so an upgrade invalidates old results) is part of every key.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel, SecretStr

import medtune_core
from medtune_core.dataio import Manifest
from medtune_core.hashing import file_sha256, path_sha256

#: Files up to this size are checked by content hash before a cached result naming them is reused; bigger ones (model
#: weights) by size and modification time, which a copy or rewrite changes too (hashes are memoised per file version).
HASH_LIMIT = 256 * 1024 * 1024


def _file_state(path: Path) -> tuple[int, str]:
    st = path.stat()
    return st.st_size, (file_sha256(path) if st.st_size <= HASH_LIMIT else f"mtime:{st.st_mtime_ns}")


@dataclass(frozen=True)
class OutputPath(os.PathLike):
    """A file or folder a task wrote, named in its result so that a cached result is checked before reuse.

    Return ``OutputPath.of(path)`` (alone, or inside a dict / list / tuple) instead of a plain path string:
    :func:`tasks.base.call_fresh` and :func:`tasks.base.submit_fresh` then recompute a cached result whose file or
    folder was deleted or changed since (a deleted ``merged/`` model must not come back from the cache). A folder's
    state is the list of its files with their sizes and content hashes (``HASH_LIMIT``). It is a path
    (``os.fspath``, ``Path(ref)``, ``str(ref)``), so callers that took a string keep working.
    """

    path: str
    state: str

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> OutputPath:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: the task's output does not exist")
        return cls(str(p), _path_state(p))

    def is_current(self) -> bool:
        p = Path(self.path)
        return p.exists() and _path_state(p) == self.state

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path


def _path_state(path: Path) -> str:
    if path.is_file():
        size, digest = _file_state(path)
        return f"file:{size}:{digest}"
    files = sorted(f for f in path.rglob("*") if f.is_file())
    listing = [(f.relative_to(path).as_posix(), *_file_state(f)) for f in files]
    return "dir:" + hash_objects(listing, raise_on_failure=True)


def fingerprint(value: Any) -> Any:
    """A hashable, content-based stand-in for ``value``: paths become content hashes, secrets vanish."""
    if isinstance(value, os.PathLike):
        # The name and the contents: tasks often derive output names from input names, so equal bytes under
        # two names must not share a result; a changed file under one name must not either.
        return ("path", str(Path(value).resolve()), path_sha256(Path(value)))
    if isinstance(value, Manifest):
        return ("manifest", value.format, value.sha256)
    if isinstance(value, SecretStr):
        return ("secret",)  # a different key must not invalidate results, and never enters a key
    if isinstance(value, BaseModel):
        return (type(value).__qualname__, fingerprint(value.model_dump(mode="python")))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__qualname__,
            fingerprint({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}),
        )
    if isinstance(value, dict):
        return {str(k): fingerprint(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [fingerprint(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    return value


#: Parameter names that name where a task *writes*: keyed by location only (hashing their contents would make
#: the key change as soon as the task has run once, so a failed run's finished steps would never be reused).
OUTPUT_PARAMS = frozenset({"dst", "out", "output", "out_dir", "output_dir", "output_path"})


@dataclass
class ContentInputs(CachePolicy):
    """Key on the task's inputs, with files and folders hashed by location and content (outputs by location)."""

    exclude: list[str] = field(default_factory=list)
    outputs: frozenset[str] = OUTPUT_PARAMS

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        relevant = {
            k: (
                ("output", str(Path(v).resolve()))
                if k in self.outputs and isinstance(v, os.PathLike)
                else fingerprint(v)
            )
            for k, v in (inputs or {}).items()
            if k not in self.exclude
        }
        return hash_objects(relevant, medtune_core.__version__, raise_on_failure=True)

    def __sub__(self, other: str) -> CachePolicy:
        return dataclasses.replace(self, exclude=[*self.exclude, other])


def content_aware(outputs: frozenset[str] | set[str] | None = None) -> CachePolicy:
    """The policy for a task whose output-location parameters are ``outputs`` (default: :data:`OUTPUT_PARAMS`)."""
    return TASK_SOURCE + ContentInputs(outputs=OUTPUT_PARAMS | frozenset(outputs or ()))


#: The policy every cached medtune task uses.
CONTENT_AWARE = content_aware()
