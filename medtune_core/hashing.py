"""Content hashes of files and folders: what cache keys and manifests are made of.

A file's digest is memoised per (path, size, mtime, inode) so that hashing the same multi-GB input for
several cache keys in one process reads it once.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

CHUNK = 1 << 20


@lru_cache(maxsize=4096)
def _file_sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    st = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def tree_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a folder: relative file names and their contents, in sorted order."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def path_sha256(path: str | os.PathLike[str]) -> str:
    """Content hash of a file or a folder; a missing path hashes as its absence."""
    p = Path(path)
    if p.is_dir():
        return tree_sha256(p)
    if p.is_file():
        return file_sha256(p)
    return "missing:" + hashlib.sha256(str(p).encode()).hexdigest()
