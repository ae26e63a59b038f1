"""Embedding backends, a registry: sentence-transformers, an OpenAI-compatible API, and model-free n-gram hashing.

Every backend returns L2-normalised float32 rows, so inner product is cosine similarity. ``fingerprint()`` says what
determines the vectors (never a secret): it goes into vector-store manifests and cache keys.

Add a backend by subclassing :class:`EmbeddingBackend` and decorating it with :func:`register_backend`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medtune_core.errors import MedtuneError
from medtune_core.sqlite_cache import connect_cache

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


BACKENDS: dict[str, Callable[[EmbeddingConfig], EmbeddingBackend]] = {}


def register_backend(cls: type[EmbeddingBackend]) -> type[EmbeddingBackend]:
    BACKENDS[cls.name] = cls.from_config  # type: ignore[attr-defined]
    return cls


def make_backend(config: EmbeddingConfig | str, **overrides: Any) -> EmbeddingBackend:
    """Build the backend a config (or a bare backend name) describes."""
    if isinstance(config, str):
        config = EmbeddingConfig(backend=config)
    if overrides:
        config = EmbeddingConfig(**{**asdict(config), **overrides})
    try:
        factory = BACKENDS[config.backend]
    except KeyError:
        raise MedtuneError(
            f"unknown embedding backend {config.backend!r}; known: {', '.join(sorted(BACKENDS))}"
        ) from None
    return factory(config)


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


@register_backend
class NgramHashBackend(EmbeddingBackend):
    """Character n-grams (default 1-3) hashed into ``2**bits`` signed buckets, term-frequency weighted, L2-normalised.

    DSIR-style feature hashing: no model, no tokenizer, any script (Chinese included), deterministic across processes
    and machines. The random sign per bucket keeps collisions from inflating similarity between unrelated texts.
    """

    name = "ngram-hash"
    description = "model-free character n-gram hashing (works on Chinese)"

    def __init__(self, bits: int = 12, ngram_min: int = 1, ngram_max: int = 3, sublinear_tf: bool = False) -> None:
        super().__init__()
        if not 4 <= bits <= 20:
            raise MedtuneError(f"ngram-hash bits must be within 4..20, got {bits}")
        if not 1 <= ngram_min <= ngram_max <= 8:
            raise MedtuneError(f"ngram-hash needs 1 <= ngram_min <= ngram_max <= 8, got {ngram_min}..{ngram_max}")
        self.bits, self.ngram_min, self.ngram_max, self.sublinear_tf = bits, ngram_min, ngram_max, sublinear_tf

    @classmethod
    def from_config(cls, config: EmbeddingConfig) -> NgramHashBackend:
        return cls(**config.options)

    @property
    def dim(self) -> int:
        return 1 << self.bits

    def fingerprint(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "bits": self.bits,
            "ngram": [self.ngram_min, self.ngram_max],
            "sublinear_tf": self.sublinear_tf,
            "version": 1,
        }

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        dim, n_texts = self.dim, len(texts)
        norm = [normalize_for_ngrams(t) for t in texts]
        # One array of code points for the whole batch, texts separated by 0 (no n-gram crosses a boundary).
        codes = np.frombuffer(("\x00".join(norm) + "\x00").encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        is_sep = codes == 0
        row = np.cumsum(is_sep) - is_sep  # the text each position belongs to
        seps = np.concatenate([[0], np.cumsum(is_sep)])  # seps[i] = separators before position i
        out = np.zeros(n_texts * dim, dtype=np.float64)
        total = len(codes)
        for n in range(self.ngram_min, self.ngram_max + 1):
            m = total - n + 1
            if m <= 0:
                continue
            h = np.full(m, (n * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
            for j in range(n):
                h = (h ^ codes[j : j + m]) * _PRIME
            h = _mix(h)
            valid = (seps[n : n + m] - seps[:m]) == 0  # no separator inside the window
            h, r = h[valid], row[:m][valid]
            bucket = (h & np.uint64(dim - 1)).astype(np.int64)
            sign = 1.0 - 2.0 * (h >> _TOP).astype(np.float64)
            out += np.bincount(r * dim + bucket, weights=sign, minlength=n_texts * dim)
        vecs = out.reshape(n_texts, dim)
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


_VECTORS_SCHEMA = "CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB NOT NULL)"


class EmbeddingCache:
    """Per-text vectors of one API model in SQLite (float32 blobs), so a re-run never pays twice for a text."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = connect_cache(self.path, _VECTORS_SCHEMA)
        self.hits = self.misses = 0

    @staticmethod
    def key(namespace: str, text: str) -> str:
        return hashlib.sha256(f"{namespace}\0{text}".encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = list(keys[i : i + 500])
                marks = ",".join("?" * len(chunk))
                for k, blob in self._conn.execute(f"SELECT key, vec FROM vectors WHERE key IN ({marks})", chunk):
                    found[k] = np.frombuffer(blob, dtype=np.float32)
        self.hits += len(found)
        self.misses += len(set(keys)) - len(found)
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO vectors (key, vec) VALUES (?, ?)",
                [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()],
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@register_backend
class OpenAIEmbeddingsBackend(EmbeddingBackend):
    """An OpenAI-compatible ``/embeddings`` endpoint (OpenAI, Zhipu ``embedding-3``, DashScope ``text-embedding-v3``).

    Texts go in batches of ``batch_size`` with at most ``concurrency`` requests in flight, retried with exponential
    backoff on 429/5xx/timeouts; vectors come back in input order. With ``cache_path`` each text's vector is cached,
    so a re-run pays nothing. The key comes from ``api_key`` or medtune's settings (chosen by the endpoint's host) and
    never appears in :meth:`fingerprint`, logs or errors.

    The work is done by :class:`medtune_core.llm.client.LLMClient` (budget, cost ledger, response cache) when it is
    installed; otherwise by the ``openai`` SDK directly with the same batching, concurrency, retries and a per-text
    SQLite cache (:class:`EmbeddingCache`).
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
        use_llm_client: bool = True,
    ) -> None:
        super().__init__()
        from medtune_core.settings import get_settings

        settings = get_settings()
        self.model, self.batch_size, self.concurrency = model, max(1, batch_size), max(1, concurrency)
        self.retries, self.backoff_s, self.timeout_s, self.dimensions = retries, backoff_s, timeout_s, dimensions
        self.base_url = base_url or settings.openai_base_url
        self._dim: int | None = dimensions
        self._calls_lock = threading.Lock()
        self.llm_client: Any = None
        self.client: Any = None
        self.cache: EmbeddingCache | None = None
        try:
            if not use_llm_client:
                raise ImportError
            from medtune_core.llm.cache import ResponseCache
            from medtune_core.llm.client import LLMClient, LLMConfig
        except ImportError:
            import openai

            key = api_key or (settings.openai_api_key.get_secret_value() if settings.openai_api_key else None)
            if not key:
                raise MedtuneError(
                    "the openai-api embedding backend needs an API key (OPENAI_API_KEY or api_key)"
                ) from None
            self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout_s, max_retries=0)
            self.cache = EmbeddingCache(cache_path) if cache_path else None
        else:
            from pydantic import SecretStr

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
        out = self._embed_llm_client(texts) if self.llm_client is not None else self._embed_sdk(texts)
        if len(out):
            self._dim = out.shape[1]
        return out

    # -- through medtune's LLM client (async) ---------------------------------------------------------------------
    def _embed_llm_client(self, texts: Sequence[str]) -> np.ndarray:
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
        return np.asarray(result.vectors, dtype=np.float32)

    # -- straight through the openai SDK ---------------------------------------------------------------------------
    def _request(self, batch: list[str]) -> np.ndarray:
        import openai

        kwargs: dict[str, Any] = {"model": self.model, "input": batch}
        if self.dimensions:
            kwargs["dimensions"] = self.dimensions
        for attempt in range(self.retries + 1):
            try:
                with self._calls_lock:
                    self.calls += 1
                resp = self.client.embeddings.create(**kwargs)
                data = sorted(resp.data, key=lambda d: d.index)
                if len(data) != len(batch):
                    raise MedtuneError(f"embeddings API returned {len(data)} vectors for {len(batch)} texts")
                return np.asarray([d.embedding for d in data], dtype=np.float32)
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
                if attempt == self.retries:
                    raise MedtuneError(
                        f"embeddings API failed after {attempt + 1} attempts: {type(exc).__name__}"
                    ) from None
                delay = self.backoff_s * 2**attempt
                log.warning("embeddings API: %s, retrying in %.1f s", type(exc).__name__, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _embed_sdk(self, texts: Sequence[str]) -> np.ndarray:
        namespace = f"{self.base_url}|{self.model}|{self.dimensions}"
        keys = [EmbeddingCache.key(namespace, t) for t in texts] if self.cache else []
        cached = self.cache.get_many(keys) if self.cache else {}
        unique: dict[str, int] = {}
        for i, t in enumerate(texts):
            if not self.cache or keys[i] not in cached:
                unique.setdefault(t, len(unique))
        pending = list(unique)
        batches = [pending[i : i + self.batch_size] for i in range(0, len(pending), self.batch_size)]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results = list(pool.map(self._request, batches))
        fresh = np.concatenate(results) if results else None
        dim = fresh.shape[1] if fresh is not None else len(next(iter(cached.values())))
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i] = cached[keys[i]] if self.cache and keys[i] in cached else fresh[unique[t]]  # type: ignore[index]
        if self.cache is not None and fresh is not None:
            self.cache.put_many({EmbeddingCache.key(namespace, t): fresh[j] for t, j in unique.items()})
        return out
