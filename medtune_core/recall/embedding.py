"""Embedding backends, a registry: sentence-transformers, an OpenAI-compatible API, and model-free n-gram hashing.

Every backend returns L2-normalised float32 rows, so inner product is cosine similarity. ``fingerprint()`` says what
determines the vectors (never a secret): it goes into vector-store manifests and cache keys.

Add a backend by subclassing :class:`EmbeddingBackend` and decorating it with :func:`register_backend`.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medtune_core.errors import MedtuneError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingConfig:
    """Which backend and how it runs. ``model`` means a model reference, an API model name, or nothing (n-gram)."""

    backend: str = "ngram-hash"
    model: str | None = None
    batch_size: int = 64
    device: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


class EmbeddingBackend(ABC):
    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: Default recall threshold: the cosine a related row reaches with this backend's vectors.
    default_threshold: ClassVar[float] = 0.75
    #: Default leakage guard: a pool row above this cosine against any view of any test item is a leak. Semantic
    #: models put paraphrases near 0.9, so their guard sits lower than the model-free backend's.
    default_guard: ClassVar[float] = 0.95

    def __init__(self) -> None:
        #: How many batches went to the model or the API (what the flow test counts).
        self.calls = 0

    @property
    @abstractmethod
    def dim(self) -> int | None:
        """The vector size, or None while unknown (an API backend learns it from its first answer)."""

    @abstractmethod
    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (any size), returning float32 rows."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors of ``texts`` (shape ``(len(texts), dim)``)."""
        if len(texts) == 0:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return l2_normalize(np.asarray(self._embed(list(texts)), dtype=np.float32))

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What determines the vectors; no secret."""

    def unk_share(self, texts: Sequence[str]) -> float | None:
        """The share of the tokens of ``texts`` this backend's tokenizer cannot represent (``[UNK]``); None when the
        backend has no vocabulary to fall out of (model-free hashing, a remote API)."""
        return None

    @classmethod
    @abstractmethod
    def from_config(cls, config: EmbeddingConfig) -> EmbeddingBackend:
        """The backend an :class:`EmbeddingConfig` describes."""

    @classmethod
    def fit_statistics(cls, config: EmbeddingConfig, text_shards: Sequence[Path], out_dir: Path) -> dict[str, Any]:
        """Corpus statistics the backend learns from the pool before embedding (none by default).

        Returns options to add to the embedding config (files written under ``out_dir``, with their hashes, so the
        cache keys of the embedding tasks follow them)."""
        return {}


#: The registered backends by name (the flow's choice list and the CLI's are derived from it).
BACKENDS: dict[str, type[EmbeddingBackend]] = {}


def register_backend(cls: type[EmbeddingBackend]) -> type[EmbeddingBackend]:
    BACKENDS[cls.name] = cls
    return cls


def backend_class(name: str) -> type[EmbeddingBackend]:
    """The registered backend class called ``name`` (a clear error listing the known ones otherwise)."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise MedtuneError(f"unknown embedding backend {name!r}; known: {', '.join(sorted(BACKENDS))}") from None


def make_backend(config: EmbeddingConfig | str, **overrides: Any) -> EmbeddingBackend:
    """Build the backend a config (or a bare backend name) describes."""
    if isinstance(config, str):
        config = EmbeddingConfig(backend=config)
    if overrides:
        config = EmbeddingConfig(**{**asdict(config), **overrides})
    return backend_class(config.backend).from_config(config)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (x / norms).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- n-gram hashing

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_PRIME = np.uint64(0x100000001B3)
_SHIFT = np.uint64(33)
_TOP = np.uint64(63)


def _mix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (vectorised; uint64 arithmetic wraps)."""
    h = h ^ (h >> _SHIFT)
    h = h * _M1
    h = h ^ (h >> _SHIFT)
    h = h * _M2
    return h ^ (h >> _SHIFT)


def normalize_for_ngrams(text: str) -> str:
    return " ".join(text.lower().split()).replace("\x00", " ")


IDF_BITS = 20  # n-gram identities for the document frequencies: 2**20 slots (4 MB), far fewer collisions than dim


def _codes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One array of code points for a batch (texts separated by 0), the text of each position, separators before it."""
    norm = [normalize_for_ngrams(t) for t in texts]
    codes = np.frombuffer(("\x00".join(norm) + "\x00").encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    is_sep = codes == 0
    row = np.cumsum(is_sep) - is_sep  # the text each position belongs to
    seps = np.concatenate([[0], np.cumsum(is_sep)])  # seps[i] = separators before position i
    return codes, row, seps


def _ngram_hashes(texts: Sequence[str], ngram_min: int, ngram_max: int) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit hash of every character n-gram of every text and the text it belongs to (no n-gram crosses texts)."""
    codes, row, seps = _codes(texts)
    total = len(codes)
    hashes, rows = [], []
    for n in range(ngram_min, ngram_max + 1):
        m = total - n + 1
        if m <= 0:
            continue
        h = np.full(m, (n * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
        for j in range(n):
            h = (h ^ codes[j : j + m]) * _PRIME
        h = _mix(h)
        valid = (seps[n : n + m] - seps[:m]) == 0  # no separator inside the window
        hashes.append(h[valid])
        rows.append(row[:m][valid])
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(hashes), np.concatenate(rows).astype(np.int64)


def _slot(h: np.ndarray) -> np.ndarray:
    """The document-frequency slot of an n-gram hash (its top bits; the bucket uses the low bits)."""
    return (h >> np.uint64(64 - IDF_BITS)).astype(np.int64)


@register_backend
class NgramHashBackend(EmbeddingBackend):
    """Character n-grams (default 1-3) hashed into ``2**bits`` signed buckets, L2-normalised.

    DSIR-style feature hashing: no model, no tokenizer, any script (Chinese included), deterministic across processes
    and machines. The random sign per bucket keeps collisions from inflating similarity between unrelated texts.

    Weighting: raw term frequency by default; with ``idf_path`` (document frequencies of the pool's n-grams, written by
    :meth:`fit_statistics`) each n-gram counts ``(1 + log tf) * idf``, so characters every row shares ("的", "是什么",
    "患者") stop deciding the ranking and a long row no longer wins by holding every common character: TF-IDF
    cosine, length-normalised like BM25's document-length term.
    """

    name = "ngram-hash"
    description = "model-free character n-gram hashing (works on Chinese)"
    default_threshold = 0.3
    #: Character n-gram cosines of a copy with 1-2 edited characters run 0.6-0.9; the guard catches what is above
    #: 0.85 and the near-copy decontamination (edit distance on the normalised question) catches the rest.
    default_guard = 0.85

    def __init__(
        self,
        bits: int = 12,
        ngram_min: int = 1,
        ngram_max: int = 3,
        sublinear_tf: bool = False,
        idf_path: str | None = None,
        idf_sha256: str | None = None,
    ) -> None:
        super().__init__()
        if not 4 <= bits <= 20:
            raise MedtuneError(f"ngram-hash bits must be within 4..20, got {bits}")
        if not 1 <= ngram_min <= ngram_max <= 8:
            raise MedtuneError(f"ngram-hash needs 1 <= ngram_min <= ngram_max <= 8, got {ngram_min}..{ngram_max}")
        self.bits, self.ngram_min, self.ngram_max, self.sublinear_tf = bits, ngram_min, ngram_max, sublinear_tf
        self.idf: np.ndarray | None = None
        self.idf_sha256 = idf_sha256
        if idf_path is not None:
            from medtune_core.hashing import file_sha256

            actual = file_sha256(idf_path)
            if idf_sha256 is not None and actual != idf_sha256:
                raise MedtuneError(f"{idf_path}: document frequencies changed since they were fitted (sha256)")
            self.idf_sha256 = actual
            self.idf = np.load(idf_path, allow_pickle=False).astype(np.float64)
            if self.idf.shape != (1 << IDF_BITS,):
                raise MedtuneError(f"{idf_path}: {self.idf.shape} document frequencies, expected {1 << IDF_BITS}")

    @classmethod
    def from_config(cls, config: EmbeddingConfig) -> NgramHashBackend:
        return cls(**config.options)

    @classmethod
    def fit_statistics(cls, config: EmbeddingConfig, text_shards: Sequence[Path], out_dir: Path) -> dict[str, Any]:
        """Smoothed IDF of every n-gram slot over the pool's texts (``log((N + 1) / (df + 1)) + 1``)."""
        from medtune_core.dataio import atomic_write
        from medtune_core.hashing import file_sha256
        from medtune_core.recall.pool import read_text_shard

        opts = {k: v for k, v in config.options.items() if k not in ("idf_path", "idf_sha256")}
        probe = cls(**opts)
        df = np.zeros(1 << IDF_BITS, dtype=np.int64)
        docs = 0
        for shard in text_shards:
            _, texts = read_text_shard(shard)
            for start in range(0, len(texts), 4096):
                batch = texts[start : start + 4096]
                h, r = _ngram_hashes(batch, probe.ngram_min, probe.ngram_max)
                pairs = np.unique((r << IDF_BITS) | _slot(h))  # each n-gram slot once per text
                df += np.bincount(pairs & ((1 << IDF_BITS) - 1), minlength=1 << IDF_BITS)
                docs += len(batch)
        idf = (np.log((docs + 1) / (df + 1)) + 1.0).astype(np.float32)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "ngram_idf.npy"
        with atomic_write(path, "wb") as fh:
            np.save(fh, idf, allow_pickle=False)
        return {"idf_path": str(path), "idf_sha256": file_sha256(path)}

    @property
    def dim(self) -> int:
        return 1 << self.bits

    def fingerprint(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "bits": self.bits,
            "ngram": [self.ngram_min, self.ngram_max],
            "sublinear_tf": self.sublinear_tf,
            "idf_sha256": self.idf_sha256,
            "version": 2,
        }

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        dim, n_texts = self.dim, len(texts)
        h, r = _ngram_hashes(texts, self.ngram_min, self.ngram_max)
        if self.idf is not None:
            # (1 + log tf) * idf per distinct n-gram of a text: key the pairs (text, hash) and count them
            order = np.lexsort((h, r))
            h, r = h[order], r[order]
            first = np.ones(len(h), dtype=bool)
            first[1:] = (h[1:] != h[:-1]) | (r[1:] != r[:-1])
            starts = np.nonzero(first)[0]
            tf = np.diff(np.append(starts, len(h))).astype(np.float64)
            h, r = h[starts], r[starts]
            weight = (1.0 + np.log(tf)) * self.idf[_slot(h)]
        else:
            weight = np.ones(len(h), dtype=np.float64)
        bucket = (h & np.uint64(dim - 1)).astype(np.int64)
        sign = 1.0 - 2.0 * (h >> _TOP).astype(np.float64)
        vecs = np.bincount(r * dim + bucket, weights=sign * weight, minlength=n_texts * dim).reshape(n_texts, dim)
        if self.sublinear_tf:
            vecs = np.sign(vecs) * np.log1p(np.abs(vecs))
        return vecs.astype(np.float32)


# --------------------------------------------------------------------------- sentence-transformers


@register_backend
class SentenceTransformersBackend(EmbeddingBackend):
    """A sentence-transformers model: ``embedded:minilm-l6`` (default), a local folder or a cached hub id."""

    name = "sentence-transformers"
    description = "sentence-transformers model (local path, embedded:NAME or cached hub id)"

    def __init__(self, model: str = "embedded:minilm-l6", batch_size: int = 64, device: str | None = None) -> None:
        super().__init__()
        from sentence_transformers import SentenceTransformer

        from medtune_core.models.registry import resolve_model

        self.model_ref, self.batch_size = model, batch_size
        self.path = resolve_model(model)
        self.model = SentenceTransformer(str(self.path), device=device or "cpu")
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self._dim = int(get_dim())

    @classmethod
    def from_config(cls, config: EmbeddingConfig) -> SentenceTransformersBackend:
        return cls(config.model or "embedded:minilm-l6", config.batch_size, config.device, **config.options)

    @property
    def dim(self) -> int:
        return self._dim

    def fingerprint(self) -> dict[str, Any]:
        from medtune_core.hashing import path_sha256

        weights = next((p for p in sorted(self.path.glob("*.safetensors"))), None) or self.path
        return {"backend": self.name, "model": self.model_ref, "weights_sha256": path_sha256(weights), "dim": self._dim}

    def unk_share(self, texts: Sequence[str]) -> float | None:
        """Share of the texts' tokens that the model's tokenizer maps to its unknown token (0 for byte-level BPE)."""
        tok = getattr(self.model, "tokenizer", None)
        unk = getattr(tok, "unk_token_id", None)
        if tok is None or unk is None or not texts:
            return 0.0 if tok is not None else None
        total = hits = 0
        for start in range(0, len(texts), 256):
            for ids in tok(list(texts[start : start + 256]), add_special_tokens=False)["input_ids"]:
                total += len(ids)
                hits += sum(1 for i in ids if i == unk)
        return hits / total if total else 0.0

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )


# --------------------------------------------------------------------------- OpenAI-compatible API


@register_backend
class OpenAIEmbeddingsBackend(EmbeddingBackend):
    """An OpenAI-compatible ``/embeddings`` endpoint (OpenAI, Zhipu ``embedding-3``, DashScope ``text-embedding-v3``).

    The work is done by the project's one LLM client (:class:`medtune_core.llm.client.LLMClient`): batches of
    ``batch_size`` texts with at most ``concurrency`` requests in flight, retries of network errors only (429, 5xx,
    timeouts, lost connections; a 4xx that says the request is wrong fails at once), the cost ledger and, with
    ``cache_path``, its response cache (one entry per text, so a re-run pays nothing). The key comes from ``api_key``
    or medtune's settings (chosen by the endpoint's host) and never appears in :meth:`fingerprint`, logs or errors.
    """

    name = "openai-api"
    description = "OpenAI-compatible embeddings API"

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        batch_size: int = 64,
        concurrency: int = 4,
        retries: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 60.0,
        dimensions: int | None = None,
        cache_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        from pydantic import SecretStr

        from medtune_core.llm.cache import ResponseCache
        from medtune_core.llm.client import LLMClient, LLMConfig
        from medtune_core.settings import get_settings

        self.model, self.batch_size, self.concurrency = model, max(1, batch_size), max(1, concurrency)
        self.dimensions = dimensions
        self.base_url = base_url or get_settings().openai_base_url
        self._dim: int | None = dimensions
        self._calls_lock = threading.Lock()
        options: dict[str, Any] = {
            "embedding_model": model,
            "concurrency": self.concurrency,
            "max_retries": retries,
            "backoff_base_s": backoff_s,
            "timeout_s": timeout_s,
        }
        if api_key:
            options["api_key"] = SecretStr(api_key)
        config = LLMConfig.from_settings(model, self.base_url, **options)
        cache = ResponseCache(cache_path) if cache_path else None  # ours: the client's aclose leaves it open
        self.llm_client = LLMClient(config, cache=cache)

    @classmethod
    def from_config(cls, config: EmbeddingConfig) -> OpenAIEmbeddingsBackend:
        return cls(config.model or "text-embedding-3-small", batch_size=config.batch_size, **config.options)

    @property
    def dim(self) -> int | None:
        return self._dim

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "base_url": self.base_url, "dimensions": self.dimensions}

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        import asyncio

        async def run() -> Any:
            try:
                return await self.llm_client.embeddings(
                    list(texts), batch_size=self.batch_size, dimensions=self.dimensions
                )
            finally:
                await self.llm_client.aclose()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            result = asyncio.run(run())
        else:  # called from inside an event loop: run ours on a worker thread
            with ThreadPoolExecutor(max_workers=1) as pool:
                result = pool.submit(asyncio.run, run()).result()
        unique = len(set(texts))
        with self._calls_lock:
            self.calls += -(-(unique - result.cache_hits) // self.batch_size)
        out = np.asarray(result.vectors, dtype=np.float32)
        if len(out):
            self._dim = out.shape[1]
        return out
