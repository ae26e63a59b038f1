"""Identities the Bailian server keeps, so that no machine and no crash ever uploads a file or creates a job twice.

A local registry only knows what this machine did; a crash between the server storing something and answering
leaves nothing locally at all. So every object carries its identity in fields the server stores and lists:

- **A file**: its sha256 in the uploaded name (``mainland_4opt_train.<16 hex>.jsonl``) and in full in the
  description (``medtune sha256:<64 hex> mainland_4opt_train.jsonl``). A listed file matches when either says the
  same hash; size and md5, where the list gives them, must agree as well. A file uploaded before tags existed
  matches by its plain name with md5 and size, when the list gives md5.
- **A job**: the hash of what it trains (the content hashes of its training and validation files, the base model,
  the training type, the hyper-parameters) as ``medtune-<16 hex>`` in ``model_name``, the name the server gives
  the fine-tuned model. A listed job matches when that tag appears in one of its names, or when its own fields
  (model, type, hyper-parameters, files by content) are the same; the newest match wins.

:class:`LogCursor` turns pages of a job's log into new lines only, whatever the server did with the offset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TAG_HEX = 16
_DESC_SHA = re.compile(r"sha256:([0-9a-f]{64})")
_NAME_TAG = re.compile(r"\.([0-9a-f]{16})\.[^.]+$")


def upload_name(path: Path, sha: str) -> str:
    """The name a file is uploaded under: its own name with the first 16 hex of its sha256 before the suffix."""
    return f"{path.stem}.{sha[:TAG_HEX]}{path.suffix}"


def upload_description(name: str, sha: str, note: str | None = None) -> str:
    """The description a file is uploaded with: the full sha256, the local name, an optional note."""
    return f"medtune sha256:{sha} {name}" + (f" ({note})" if note else "")


def listed_sha(entry: Mapping[str, Any]) -> str | None:
    """The sha256 a listed file says it has (full from the description, else None)."""
    m = _DESC_SHA.search(str(entry.get("description") or ""))
    return m.group(1) if m else None


def listed_tag(entry: Mapping[str, Any]) -> str | None:
    """The 16-hex sha prefix in a listed file's name (``<stem>.<tag>.<suffix>``), else None."""
    m = _NAME_TAG.search(str(entry.get("name") or ""))
    return m.group(1) if m else None


def file_matches(entry: Mapping[str, Any], *, sha: str, md5: str, size: int, name: str) -> bool:
    """Whether a file of the server's list is the local file with this sha256, md5, size and plain name."""
    full, tag = listed_sha(entry), listed_tag(entry)
    if full is not None:
        same = full == sha
    elif tag is not None:
        same = tag == sha[:TAG_HEX]
    else:  # uploaded without a tag (an older medtune, the console): only md5 can tell
        same = entry.get("name") == name and bool(entry.get("md5"))
    if not same:
        return False
    if entry.get("md5") and entry["md5"] != md5:
        return False
    listed_size = entry.get("size", entry.get("bytes"))
    return listed_size is None or int(listed_size) == size


def file_identity(entry: Mapping[str, Any]) -> str | None:
    """The content identity a listed file carries (full sha256, else the 16-hex tag), or None."""
    return listed_sha(entry) or listed_tag(entry)


def job_identity(
    model: str,
    training_type: str,
    hyper_parameters: Mapping[str, Any],
    training_files: Iterable[str],
    validation_files: Iterable[str],
) -> str:
    """The sha256 of what a job trains; files are given by :func:`file_key` (content, or the id where unknown)."""
    payload = {
        "model": model,
        "training_type": training_type,
        "hyper_parameters": {k: _norm(v) for k, v in hyper_parameters.items()},
        "training": list(training_files),
        "validation": list(validation_files),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def file_key(sha: str | None, file_id: str) -> str:
    """What stands for a file in a job's identity: its content (16 hex of the sha256), else ``id:<file id>``."""
    return sha[:TAG_HEX] if sha else f"id:{file_id}"


def job_tag(identity: str) -> str:
    return f"medtune-{identity[:TAG_HEX]}"


def _norm(value: Any) -> Any:
    """Hyper-parameter values as the server may echo them: ``"1e-4"`` and ``0.0001`` are the same."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def same_hyper_parameters(sent: Mapping[str, Any], listed: Mapping[str, Any]) -> bool:
    """Every hyper-parameter we send is listed with the same value (the server adds its defaults to the rest)."""
    return all(k in listed and _norm(listed[k]) == _norm(v) for k, v in sent.items())


class LogCursor:
    """A job's log lines seen so far; :meth:`feed` returns only the new ones of a page.

    Servers differ in what they do with ``offset``: honour it (0-based), count from 1, or ignore it and answer
    from the first line. A page is lined up against what was seen: starting at line 0 (offset ignored), at the
    last line seen (1-based) or right after it (honoured), first fit wins; nothing is repeated either way.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []

    @property
    def offset(self) -> int:
        return len(self.lines)

    def feed(self, page: list[str]) -> list[str]:
        seen = len(self.lines)
        for start in sorted({0, max(seen - 1, 0)}):
            overlap = seen - start
            if overlap and len(page) >= overlap and page[:overlap] == self.lines[start:seen]:
                return self._take(page[overlap:])
        return self._take(page)

    def _take(self, new: list[str]) -> list[str]:
        self.lines += new
        return new


def pages_until_done(fetch: Callable[[int], tuple[list[str], int]], cursor: LogCursor) -> list[str]:
    """Every new line: pages fetched from ``cursor.offset`` until one brings nothing new or the total is reached."""
    out: list[str] = []
    while True:
        page, total = fetch(cursor.offset)
        new = cursor.feed(page)
        out += new
        if not new or cursor.offset >= total:
            return out
