"""Token counts with the offline Qwen tokenizer shipped in the ``dashscope`` SDK, and the training cost they imply.

Bailian bills training as ``tokens of the training data × epochs × price per 1,000 tokens``. A row's tokens are
the tokens of its messages rendered in ChatML (``<|im_start|>role\\n content<|im_end|>\\n`` each).

Counting is batched: a batch of rows goes to the tokenizer's Rust core in one call, and a file is read a batch
of rows at a time, so memory stays flat however large the file is.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from medtune_core.errors import MedtuneError

DEFAULT_TOKENIZER = "qwen-7b-chat"
#: Texts longer than this go through the SDK's own chunked ``encode`` (tiktoken can overflow its stack).
LONG_TEXT = 100_000

#: Training price in CNY per 1,000 tokens, by base model. Indicative defaults: Bailian's published floor for
#: token-billed training is 0.006 CNY/1k tokens (older material quotes 0.002); larger models cost more. Check the
#: console's estimate for your account and region, and pass ``prices=`` or call :func:`register_price`.
TRAINING_PRICES: dict[str, float] = {
    "qwen2.5-7b-instruct": 0.006,
    "qwen2.5-14b-instruct": 0.012,
    "qwen2.5-32b-instruct": 0.024,
    "qwen2.5-72b-instruct": 0.048,
    "qwen3-14b": 0.012,
    "qwen3-32b": 0.024,
}
CURRENCY = "CNY"


def register_price(model: str, price_per_1k: float) -> None:
    """Add or change a model's training price (CNY per 1,000 tokens)."""
    if price_per_1k < 0:
        raise MedtuneError(f"price must not be negative, got {price_per_1k}")
    TRAINING_PRICES[model] = float(price_per_1k)


@lru_cache(maxsize=4)
def _load(name: str) -> Any:
    import dashscope

    return dashscope.get_tokenizer(name)


class TokenCounter:
    """Counts Qwen tokens of texts and of chat samples rendered in ChatML (the frame of every message included).

    The fast path joins a batch of texts with ``<|endoftext|>`` and encodes them in ONE call into a numpy
    buffer: special tokens split the text before BPE, so the pieces between separators are exactly the
    per-text counts. A batch whose texts contain ``<|endoftext|>`` themselves falls back to one call a text.
    """

    SEP = "<|endoftext|>"

    def __init__(self, tokenizer: str = DEFAULT_TOKENIZER) -> None:
        self.name = tokenizer
        self._tok = _load(tokenizer)
        self._enc = getattr(self._tok, "_tokenizer", None)  # tiktoken.Encoding inside QwenTokenizer
        self._sep_id = self._enc.encode_single_token(self.SEP) if self._enc is not None else None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text)

    @staticmethod
    def render(messages: list[dict[str, str]]) -> str:
        """A chat sample as Qwen's ChatML template lays it out for training."""
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)

    def count_texts(self, texts: list[str]) -> list[int]:
        """Token counts of many texts in one tokenizer call (the naive loop makes one call a text)."""
        if not texts:
            return []
        if self._enc is None:
            return [len(self.encode(t)) for t in texts]
        long = {i for i, t in enumerate(texts) if len(t) > LONG_TEXT}
        joined = unicodedata.normalize("NFC", self.SEP.join("" if i in long else t for i, t in enumerate(texts)))
        import numpy as np

        ids = self._enc.encode_to_numpy(joined, allowed_special="all")
        seps = np.flatnonzero(ids == self._sep_id)
        if len(seps) != len(texts) - 1:  # a text held the separator itself
            return [len(self.encode(t)) for t in texts]
        counts = (np.diff(np.concatenate(([-1], seps, [len(ids)]))) - 1).tolist()
        for i in long:
            counts[i] = len(self.encode(texts[i]))
        return counts

    def count_messages(self, messages: list[dict[str, str]]) -> int:
        """Tokens of one chat sample, ChatML frame included."""
        return self.count_texts([self.render(messages)])[0]

    def count_rows(self, rows: Iterable[list[dict[str, str]]], batch_rows: int = 2048) -> Iterator[int]:
        """Tokens per chat sample for a stream of ``messages`` lists, a batch per tokenizer call."""
        batch: list[str] = []
        for messages in rows:
            batch.append(self.render(messages))
            if len(batch) >= batch_rows:
                yield from self.count_texts(batch)
                batch = []
        if batch:
            yield from self.count_texts(batch)


@dataclass
class FileTokens:
    """Token statistics of one Bailian file."""

    path: str
    rows: int = 0
    tokens: int = 0
    max_row_tokens: int = 0
    rows_over_max_length: int = 0
    max_length: int | None = None

    @property
    def mean_row_tokens(self) -> float:
        return self.tokens / self.rows if self.rows else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean_row_tokens": round(self.mean_row_tokens, 1)}


def count_file_tokens(
    path: str | os.PathLike[str],
    counter: TokenCounter | None = None,
    *,
    max_length: int | None = None,
    batch_rows: int = 2048,
) -> FileTokens:
    """Stream a Bailian file and count its tokens; rows longer than ``max_length`` (truncated in training) counted."""
    counter = counter or TokenCounter()
    stats = FileTokens(str(path), max_length=max_length)

    def rows() -> Iterator[list[dict[str, str]]]:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)["messages"]

    for n in counter.count_rows(rows(), batch_rows=batch_rows):
        stats.rows += 1
        stats.tokens += n
        stats.max_row_tokens = max(stats.max_row_tokens, n)
        if max_length is not None and n > max_length:
            stats.rows_over_max_length += 1
    return stats


@dataclass
class CostEstimate:
    """What a training run will cost: ``training tokens × epochs × price / 1000``."""

    model: str
    epochs: int
    training_tokens: int
    price_per_1k: float
    currency: str = CURRENCY
    validation_tokens: int = 0
    files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def billed_tokens(self) -> int:
        return self.training_tokens * self.epochs

    @property
    def cost(self) -> float:
        return self.billed_tokens * self.price_per_1k / 1000

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "billed_tokens": self.billed_tokens, "cost": round(self.cost, 4)}

    def summary(self) -> str:
        return (
            f"{self.model}: {self.training_tokens:,} training tokens × {self.epochs} epochs = "
            f"{self.billed_tokens:,} tokens × {self.price_per_1k} {self.currency}/1k = "
            f"{self.cost:,.2f} {self.currency}"
        )


def price_for(model: str, prices: Mapping[str, float] | None = None) -> float:
    table = {**TRAINING_PRICES, **(prices or {})}
    try:
        return float(table[model])
    except KeyError:
        raise MedtuneError(
            f"no training price known for model {model!r}; known: {', '.join(sorted(table))}. "
            "Pass prices={model: CNY per 1k tokens} or call register_price()"
        ) from None


def estimate_cost(
    model: str,
    epochs: int,
    training: Iterable[FileTokens] | int,
    *,
    validation: Iterable[FileTokens] | int = 0,
    prices: Mapping[str, float] | None = None,
) -> CostEstimate:
    """The cost of training ``model`` for ``epochs`` on files (or a token total); validation is not billed."""
    if epochs < 1:
        raise MedtuneError(f"epochs must be at least 1, got {epochs}")
    files: list[dict[str, Any]] = []
    if isinstance(training, int):
        train_tokens = training
    else:
        train = list(training)
        train_tokens = sum(f.tokens for f in train)
        files += [{**f.as_dict(), "role": "training"} for f in train]
    if isinstance(validation, int):
        val_tokens = validation
    else:
        val = list(validation)
        val_tokens = sum(f.tokens for f in val)
        files += [{**f.as_dict(), "role": "validation"} for f in val]
    return CostEstimate(model, epochs, train_tokens, price_for(model, prices), CURRENCY, val_tokens, files)


def naive_count_file(path: str | os.PathLike[str], tokenizer: str = DEFAULT_TOKENIZER) -> int:
    """The per-row baseline the benchmark compares against: json load, then one ``encode`` per message."""
    tok = _load(tokenizer)
    total = 0
    with open(Path(path), encoding="utf-8") as fh:
        for line in fh:
            total += len(tok.encode(TokenCounter.render(json.loads(line)["messages"])))
    return total


class CostCeilingExceeded(MedtuneError):
    """The estimate is above what the run was allowed to spend."""


def check_cost_ceiling(cost: float, ceiling: float | None, currency: str = CURRENCY) -> None:
    """Refuse to start paid work whose estimated ``cost`` exceeds ``ceiling`` (None: no ceiling)."""
    if ceiling is not None and cost > ceiling:
        raise CostCeilingExceeded(
            f"estimated cost {cost:,.2f} {currency} exceeds the ceiling of {ceiling:,.2f} {currency}; "
            "raise max_cost (and confirm it) or train on less data / fewer epochs"
        )
