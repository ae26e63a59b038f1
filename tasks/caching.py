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
from medtune_core.hashing import path_sha256


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
