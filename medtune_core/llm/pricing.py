"""Token prices of common LLM APIs and the cost of one request.

Why: synthetic-data runs and teacher judges spend real money; every request is priced from the usage the provider
reports (input, output and cached input tokens) so that a run can report what it cost, project a pilot to N samples
and stop at a hard budget.

The built-in table holds list prices **taken from the providers' public price pages in 2025-10**
(:data:`PRICES_AS_OF`), per one million tokens, for the cheapest standard tier (no long-context, batch or "thinking"
surcharges). Prices change: check them, and extend or override the table with a dict
(:meth:`PriceTable.with_overrides`) or a YAML / JSON file (:meth:`PriceTable.from_file`)::

    # prices.yaml: either a flat mapping or under "models"; currency defaults to USD
    models:
      my-vllm-model: {input: 0, output: 0}
      qwen-plus: {input: 0.8, output: 2.0, cached_input: 0.16, currency: CNY}

A model missing from the table costs 0 and the :class:`Cost` says ``known=False``: pricing never crashes a run,
but a budget cannot protect an unpriced model (the client warns about that once).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune_core.errors import MedtuneError

logger = logging.getLogger(__name__)

PRICES_AS_OF = "2025-10"
"""When the built-in prices were read from the providers' price pages."""

_PER = 1_000_000


@dataclass(frozen=True)
class ModelPrice:
    """Price per one million tokens. ``cached_input`` defaults to the input price when a provider has no discount."""

    input: float
    output: float
    cached_input: float | None = None
    currency: str = "USD"

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"price {name} must be a finite number >= 0, got {value}")


@dataclass(frozen=True)
class Usage:
    """Tokens of one request as the provider reports them. ``cached_tokens`` is the part of ``prompt_tokens`` that
    was served from the provider's prompt cache (OpenAI ``prompt_tokens_details.cached_tokens``, DeepSeek
    ``prompt_cache_hit_tokens``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
        )

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any] | None) -> Usage:
        """Read a ``usage`` object of the OpenAI protocol (chat or embeddings), tolerating providers' variants."""
        if not usage:
            return cls()
        prompt = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        completion = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
        if cached is None:
            cached = usage.get("prompt_cache_hit_tokens")  # DeepSeek
        cached = min(int(cached or 0), prompt)
        return cls(prompt, completion, cached)

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
        }


@dataclass(frozen=True)
class Cost:
    """What a request cost. ``known`` is False when the model has no price (then ``amount`` is 0)."""

    amount: float
    currency: str = "USD"
    known: bool = True


_OPENAI = "USD"
_DEEPSEEK = "USD"
_CNY = "CNY"

DEFAULT_PRICES: dict[str, ModelPrice] = {
    # OpenAI (USD), platform.openai.com/docs/pricing
    "gpt-4o-mini": ModelPrice(0.15, 0.60, 0.075, _OPENAI),
    "gpt-4o": ModelPrice(2.50, 10.00, 1.25, _OPENAI),
    "gpt-4.1": ModelPrice(2.00, 8.00, 0.50, _OPENAI),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60, 0.10, _OPENAI),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40, 0.025, _OPENAI),
    "text-embedding-3-small": ModelPrice(0.02, 0.0, None, _OPENAI),
    "text-embedding-3-large": ModelPrice(0.13, 0.0, None, _OPENAI),
    # DeepSeek (USD), api-docs.deepseek.com/quick_start/pricing (V3.2: chat and reasoner priced alike)
    "deepseek-chat": ModelPrice(0.28, 0.42, 0.028, _DEEPSEEK),
    "deepseek-reasoner": ModelPrice(0.28, 0.42, 0.028, _DEEPSEEK),
    # Alibaba DashScope / Bailian (CNY, mainland region, lowest tier, non-thinking); implicit cache hits bill 20%
    "qwen-max": ModelPrice(2.4, 9.6, 0.48, _CNY),
    "qwen-plus": ModelPrice(0.8, 2.0, 0.16, _CNY),
    "qwen-turbo": ModelPrice(0.3, 0.6, 0.06, _CNY),
    "qwen-long": ModelPrice(0.5, 2.0, 0.1, _CNY),
    "text-embedding-v3": ModelPrice(0.5, 0.0, None, _CNY),
    "text-embedding-v4": ModelPrice(0.5, 0.0, None, _CNY),
    # Zhipu (CNY), bigmodel.cn/pricing
    "glm-4-flash": ModelPrice(0.0, 0.0, None, _CNY),
    "glm-4-air": ModelPrice(0.5, 0.5, None, _CNY),
    "glm-4-plus": ModelPrice(5.0, 5.0, None, _CNY),
    "embedding-3": ModelPrice(0.5, 0.0, None, _CNY),
}


class PriceTable:
    """Model name → :class:`ModelPrice`, with tolerant lookup.

    Lookup is case-insensitive, ignores a ``provider/`` prefix and falls back to the longest table entry that the
    name starts with at a ``-`` boundary, so dated snapshots such as ``gpt-4o-mini-2024-07-18`` or
    ``qwen-plus-latest`` find their family's price.
    """

    def __init__(self, prices: Mapping[str, ModelPrice] | None = None) -> None:
        self._prices: dict[str, ModelPrice] = {k.lower(): v for k, v in (prices or DEFAULT_PRICES).items()}

    @classmethod
    def default(cls) -> PriceTable:
        return cls(DEFAULT_PRICES)

    def with_overrides(self, overrides: Mapping[str, ModelPrice | Mapping[str, Any]] | str | Path | None) -> PriceTable:
        """A new table: this one plus ``overrides`` (a dict of prices or price dicts, or a YAML / JSON file path)."""
        if overrides is None:
            return PriceTable(self._prices)
        if isinstance(overrides, str | Path):
            return PriceTable({**self._prices, **_load_price_file(Path(overrides))})
        merged = dict(self._prices)
        merged.update({k.lower(): _as_price(k, v) for k, v in overrides.items()})
        return PriceTable(merged)

    @classmethod
    def from_file(cls, path: str | Path, *, include_defaults: bool = True) -> PriceTable:
        base = dict(DEFAULT_PRICES) if include_defaults else {}
        base.update(_load_price_file(Path(path)))
        return cls(base)

    def lookup(self, model: str) -> ModelPrice | None:
        name = model.strip().lower()
        candidates = [name]
        if "/" in name:
            candidates.append(name.rsplit("/", 1)[1])
        for cand in candidates:
            if cand in self._prices:
                return self._prices[cand]
        for cand in candidates:
            best = None
            for key in self._prices:
                if cand.startswith(key + "-") and (best is None or len(key) > len(best)):
                    best = key
            if best is not None:
                return self._prices[best]
        return None

    def __contains__(self, model: str) -> bool:
        return self.lookup(model) is not None

    def models(self) -> list[str]:
        return sorted(self._prices)

    def cost(self, model: str, usage: Usage) -> Cost:
        price = self.lookup(model)
        if price is None:
            return Cost(0.0, "USD", known=False)
        return Cost(price_usage(price, usage), price.currency, True)


def price_usage(price: ModelPrice, usage: Usage) -> float:
    """``(prompt - cached) × input + cached × cached_input + completion × output``, per million tokens."""
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_price = price.input if price.cached_input is None else price.cached_input
    return (
        (usage.prompt_tokens - cached) * price.input + cached * cached_price + usage.completion_tokens * price.output
    ) / _PER


def cost(model: str, usage: Usage, table: PriceTable | None = None) -> Cost:
    """The cost of ``usage`` on ``model`` (``table`` defaults to the built-in prices). Unknown model: 0, flagged."""
    return (table or PriceTable.default()).cost(model, usage)


def _as_price(model: str, value: ModelPrice | Mapping[str, Any]) -> ModelPrice:
    if isinstance(value, ModelPrice):
        return value
    if not isinstance(value, Mapping):
        raise MedtuneError(f"price of {model!r}: expected a mapping with input/output, got {type(value).__name__}")
    unknown = set(value) - {"input", "output", "cached_input", "currency"}
    if unknown or "input" not in value:
        raise MedtuneError(
            f"price of {model!r}: needs 'input' (and 'output', 'cached_input', 'currency'); "
            f"unknown keys: {sorted(unknown)}"
        )
    try:
        return ModelPrice(
            input=float(value["input"]),
            output=float(value.get("output", 0.0)),
            cached_input=None if value.get("cached_input") is None else float(value["cached_input"]),
            currency=str(value.get("currency", "USD")),
        )
    except (TypeError, ValueError) as exc:
        raise MedtuneError(f"price of {model!r}: {exc}") from exc


def _load_price_file(path: Path) -> dict[str, ModelPrice]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in {".yaml", ".yml"}:
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, Mapping):
        raise MedtuneError(f"{path}: a price file is a mapping of model name to prices")
    default_currency = data.get("currency") if isinstance(data.get("currency"), str) else None
    models = data.get("models", data)
    out: dict[str, ModelPrice] = {}
    for name, value in models.items():
        if name == "currency" and "models" not in data:
            continue
        if isinstance(value, Mapping) and default_currency and "currency" not in value:
            value = {**value, "currency": default_currency}
        out[str(name).lower()] = _as_price(f"{path}: {name}", value)
    return out
