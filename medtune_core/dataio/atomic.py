"""Atomic file writing: readers never see a half-written output, a crash leaves no partial file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Write to a temporary file beside ``path`` and rename it into place only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the output gets the mode open() would give it
        with os.fdopen(
            fd, mode, encoding=None if "b" in mode else encoding, newline="" if "b" not in mode else None
        ) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process umask, read without changing it where /proc tells (os.umask can only be read by setting it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temp_files(path: str | os.PathLike[str], older_than_s: float = 600.0) -> list[Path]:
    """Remove the temporary files :func:`atomic_write` left for ``path`` when its process was killed (``kill -9``
    skips the cleanup). The name of ``path`` may be a glob pattern (``data.part*.jsonl``). Only files untouched for
    ``older_than_s`` go: a writer still running keeps writing to its own."""
    target = Path(path)
    if not target.parent.is_dir():
        return []
    removed = []
    cutoff = time.time() - older_than_s
    for tmp in target.parent.glob(f".{target.name}.*{TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed.append(tmp)
    return removed


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path) as fh:
        fh.write(text)


#: File inside a folder built by :func:`build_folder_once` that says the build finished.
READY_MARKER = ".medtune-ready"


def build_folder_once(target: str | os.PathLike[str], build: Callable[[Path], None], marker: str = "") -> Path:
    """``target``, built by ``build(staging)`` the first time it is asked for, and never seen half-built.

    Processes (several workers, parallel test runs) may ask at once: a file lock lets one build, the others
    wait and reuse. The build happens in a staging folder that is renamed into place once ``READY_MARKER``
    (holding ``marker``) is written, so a crash leaves no folder that looks finished.
    """
    from filelock import FileLock

    target = Path(target)
    if (target / READY_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / READY_MARKER).exists():
            return target
        staging = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            build(staging)
            (staging / READY_MARKER).write_text(marker + "\n")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
