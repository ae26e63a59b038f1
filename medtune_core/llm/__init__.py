"""OpenAI-compatible LLM access for batch work: client, response cache, prices and cost ledger.

Plain Python (no Prefect). See :mod:`medtune_core.llm.client` for the rules (concurrency, retries, structured output,
cache, budget, secrets).
"""

from medtune_core.llm.cache import ResponseCache, request_key
from medtune_core.llm.client import (
    BudgetExceeded,
    ChatRequest,
    ChatResult,
    EmbeddingResult,
    Failed,
    LLMClient,
    LLMConfig,
    LLMError,
    PilotReport,
    Rejected,
    Result,
    estimate_tokens,
    extract_json,
    parse_retry_after,
)
from medtune_core.llm.ledger import CostLedger, LedgerEntry, Reservation
from medtune_core.llm.pricing import DEFAULT_PRICES, PRICES_AS_OF, Cost, ModelPrice, PriceTable, Usage, cost

__all__ = [
    "DEFAULT_PRICES",
    "PRICES_AS_OF",
    "BudgetExceeded",
    "ChatRequest",
    "ChatResult",
    "Cost",
    "CostLedger",
    "EmbeddingResult",
    "Failed",
    "LLMClient",
    "LLMConfig",
    "LLMError",
    "LedgerEntry",
    "ModelPrice",
    "PilotReport",
    "PriceTable",
    "Rejected",
    "Reservation",
    "ResponseCache",
    "Result",
    "Usage",
    "cost",
    "estimate_tokens",
    "extract_json",
    "parse_retry_after",
    "request_key",
]
