"""The SQLite file every medtune cache sits in (LLM responses, embedding vectors).

WAL journal so readers never block the writer and several worker processes of one machine can share the file;
autocommit (``isolation_level=None``) so each caller decides its transactions; a 30 s busy timeout for the moments
two processes write at once.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect_cache(path: str | Path, schema: str, *, synchronous_normal: bool = False) -> sqlite3.Connection:
    """Open (creating folder, file and table as needed) a cache database shared by threads of this process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    if synchronous_normal:  # a crash may lose the last answers, never corrupt the file: fine for a cache
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(schema)
    return conn
