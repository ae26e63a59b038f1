"""The vector store: float16 ``.npy`` shards (memory-mapped for reading), their row ids, and a manifest.

Layout of a store folder::

    store.json                 manifest: backend fingerprint, dim, shards (rows, sha256), total rows
    shard-00000.npy            float16 (rows, dim), L2-normalised
    shard-00000.ids.txt        one row id a line, same order

Shards are written one at a time, each atomically, so a killed build keeps every finished shard; vectors never
pass through JSON. float16 halves the disk and page-cache footprint; cosine scores lose < 1e-3.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtune_core.dataio import atomic_write, atomic_write_text
from medtune_core.errors import MedtuneError
from medtune_core.hashing import file_sha256
from medtune_core.recall.embedding import EmbeddingBackend
from medtune_core.recall.pool import PoolPlan, read_text_shard

STORE_MANIFEST = "store.json"
STORE_VERSION = 1


@dataclass
class ShardInfo:
    name: str  # "shard-00000" (files <name>.npy and <name>.ids.txt)
    rows: int
    dim: int
    sha256: str  # of the .npy file

    def vectors_path(self, root: Path) -> Path:
        return root / f"{self.name}.npy"

    def ids_path(self, root: Path) -> Path:
        return root / f"{self.name}.ids.txt"


@dataclass
class StoreManifest:
    dim: int
    rows: int
    backend: dict[str, Any]
    shards: list[ShardInfo]
    dtype: str = "float16"
    version: int = STORE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


def write_shard(root: str | os.PathLike[str], name: str, vectors: np.ndarray, ids: Sequence[str]) -> ShardInfo:
    """Write one shard atomically (vectors as float16 ``.npy``, then the ids)."""
    if len(vectors) != len(ids):
        raise MedtuneError(f"shard {name}: {len(vectors)} vectors for {len(ids)} ids")
    root = Path(root)
    vecs = np.ascontiguousarray(vectors, dtype=np.float16)
    with atomic_write(root / f"{name}.ids.txt") as fh:
        fh.writelines(f"{i}\n" for i in ids)
    npy = root / f"{name}.npy"
    with atomic_write(npy, "wb") as fh:
        np.save(fh, vecs, allow_pickle=False)
    return ShardInfo(name, int(vecs.shape[0]), int(vecs.shape[1]) if vecs.ndim == 2 else 0, file_sha256(npy))


def embed_text_shard(
    text_shard: str | os.PathLike[str],
    backend: EmbeddingBackend,
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    chunk_size: int = 4096,
    progress: Any = None,
) -> ShardInfo:
    """Embed one text shard (``texts-NNNNN.jsonl`` from :func:`split_pool`) into ``shard-NNNNN`` under ``out_dir``.

    Texts go to the backend ``chunk_size`` at a time; ``progress`` (a tqdm bar) advances by rows.
    """
    text_shard = Path(text_shard)
    name = name or text_shard.stem.replace("texts-", "shard-")
    ids, texts = read_text_shard(text_shard)
    # Chunks of similar lengths (as a model's own encode sorts its input): chunking then costs no extra padding.
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    vectors: np.ndarray | None = None
    for start in range(0, len(order), chunk_size):
        idx = order[start : start + chunk_size]
        part = backend.embed([texts[i] for i in idx])
        if vectors is None:
            vectors = np.zeros((len(texts), part.shape[1]), dtype=np.float16)
        vectors[idx] = part
        if progress is not None:
            progress.update(len(idx))
    if vectors is None:
        vectors = np.zeros((0, backend.dim or 0), dtype=np.float16)
    return write_shard(out_dir, name, vectors, ids)


def finalize_store(
    root: str | os.PathLike[str],
    shards: Sequence[ShardInfo],
    backend: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> StoreManifest:
    """Write ``store.json`` for finished shards (all of one dimension)."""
    dims = {s.dim for s in shards if s.rows}
    if len(dims) > 1:
        raise MedtuneError(f"shards of different dimensions {sorted(dims)}: were they embedded by different backends?")
    manifest = StoreManifest(
        dim=dims.pop() if dims else 0,
        rows=sum(s.rows for s in shards),
        backend=backend,
        shards=list(shards),
        extra=dict(extra or {}),
    )
    atomic_write_text(Path(root) / STORE_MANIFEST, json.dumps(asdict(manifest), ensure_ascii=False, indent=2) + "\n")
    return manifest


def build_store(
    plan: PoolPlan,
    plan_dir: str | os.PathLike[str],
    backend: EmbeddingBackend,
    out_dir: str | os.PathLike[str],
    *,
    chunk_size: int = 4096,
    show_progress: bool = True,
) -> StoreManifest:
    """Embed every text shard of a pool plan, shard by shard, with a tqdm progress bar; then write the manifest."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    infos = []
    with tqdm(total=plan.rows, desc="embedding pool", unit="row", disable=not show_progress) as bar:
        for shard in plan.shards:
            infos.append(embed_text_shard(Path(plan_dir) / shard, backend, out, chunk_size=chunk_size, progress=bar))
    return finalize_store(out, infos, backend.fingerprint(), {"text_mode": plan.text_mode, "sources": plan.sources})


class VectorStore:
    """Read side of a store folder: shards are memory-mapped, ids read on demand."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        path = self.root / STORE_MANIFEST
        if not path.is_file():
            raise MedtuneError(f"{self.root}: not a vector store (no {STORE_MANIFEST})")
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw["shards"] = [ShardInfo(**s) for s in raw["shards"]]
        self.manifest = StoreManifest(**raw)

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def rows(self) -> int:
        return self.manifest.rows

    def __len__(self) -> int:
        return self.manifest.rows

    def vectors(self, shard: ShardInfo) -> np.ndarray:
        arr = np.load(shard.vectors_path(self.root), mmap_mode="r", allow_pickle=False)
        if arr.shape != (shard.rows, self.dim) and shard.rows:
            raise MedtuneError(
                f"{shard.vectors_path(self.root)}: shape {arr.shape}, manifest says {(shard.rows, self.dim)}"
            )
        return arr

    def ids(self, shard: ShardInfo) -> list[str]:
        return shard.ids_path(self.root).read_text(encoding="utf-8").splitlines()

    def all_ids(self) -> list[str]:
        return [i for s in self.manifest.shards for i in self.ids(s)]

    def iter_shards(self) -> Iterator[tuple[int, ShardInfo, np.ndarray]]:
        """(global offset of the shard's first row, shard, memory-mapped float16 vectors)."""
        offset = 0
        for shard in self.manifest.shards:
            yield offset, shard, self.vectors(shard)
            offset += shard.rows
