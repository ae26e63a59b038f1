"""Per-request response cache for LLM APIs, in one SQLite file.

Why: a resumed, repeated or budget-stopped run must never pay twice for the same request. Every successful API
response is stored under the sha256 of what determines it (kind, model, messages, sampling parameters,
response_format, an optional namespace such as the provider); the next identical request is answered from the file
without a network call and counted as a hit.

The API key is never part of a key nor stored: callers pass only the request payload. One connection in WAL mode is
shared by the whole process behind a lock, so the cache is safe to use from many asyncio tasks and threads at once
(each operation is a single short statement). Several processes may share the file too (WAL, busy timeout).

Writes: :meth:`ResponseCache.put` commits at once. :meth:`ResponseCache.put_deferred` only queues the entry (``get``
already answers from the queue) for the next :meth:`ResponseCache.flush`, which writes everything queued in one
transaction: the LLM client queues the responses that arrive in one event-loop iteration and flushes right after it
(a commit per response costs ~4x more CPU). ``get`` and ``in`` see queued entries; ``len``, ``stats`` and ``close``
flush first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune_core.llm.pricing import Usage
from medtune_core.sqlite_cache import connect_cache

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    response TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
)
"""

# Request fields that never change the answer and must not split the cache.
_NON_SEMANTIC = frozenset({"timeout", "stream", "stream_options", "extra_headers", "user", "api_key"})


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace, unicode kept) for hashing."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def request_key(kind: str, payload: Mapping[str, Any], namespace: str = "") -> str:
    """sha256 of a request: ``kind`` ("chat" / "embedding"), the payload without transport-only fields, a namespace."""
    clean = {k: v for k, v in payload.items() if k not in _NON_SEMANTIC}
    return hashlib.sha256(canonical_json({"kind": kind, "ns": namespace, "payload": clean}).encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    key: str
    response: dict[str, Any]
    usage: Usage


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    writes: int
    entries: int


class ResponseCache:
    """SQLite response cache. ``get`` / ``put`` are thread- and asyncio-safe; use one instance per file and process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = connect_cache(self.path, _SCHEMA, synchronous_normal=True)
        self._pending: dict[str, tuple[Any, ...]] = {}
        self.hits = 0
        self.misses = 0
        self.writes = 0

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None:
                row = pending[3:7]
            else:
                row = self._conn.execute(
                    "SELECT response, prompt_tokens, completion_tokens, cached_tokens FROM responses WHERE key = ?",
                    (key,),
                ).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return CacheEntry(key, json.loads(row[0]), Usage(int(row[1]), int(row[2]), int(row[3])))

    def put(self, key: str, *, kind: str, model: str, response: Mapping[str, Any], usage: Usage) -> None:
        """Store a response now (with anything queued by :meth:`put_deferred`)."""
        self.put_deferred(key, kind=kind, model=model, response=response, usage=usage)
        self.flush()

    def put_deferred(self, key: str, *, kind: str, model: str, response: Mapping[str, Any], usage: Usage) -> bool:
        """Queue a response for the next :meth:`flush` (``get`` finds it at once). True if the queue was empty (the
        caller should arrange a flush)."""
        row = (
            key,
            kind,
            model,
            json.dumps(response, ensure_ascii=False, default=str),
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
            time.time(),
        )
        with self._lock:
            first = not self._pending
            self._pending[key] = row
        return first

    def flush(self) -> None:
        """Write the queued responses in one transaction."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        rows = list(self._pending.values())
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO responses "
                "(key, kind, model, response, prompt_tokens, completion_tokens, cached_tokens, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self._pending.clear()
        self.writes += len(rows)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            if key in self._pending:
                return True
            return self._conn.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            self._flush_locked()
            return int(self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def stats(self) -> CacheStats:
        entries = len(self)  # flushes first
        return CacheStats(self.hits, self.misses, self.writes, entries)

    def close(self) -> None:
        with self._lock:
            try:
                self._flush_locked()
            finally:
                self._conn.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r}, hits={self.hits}, misses={self.misses})"
