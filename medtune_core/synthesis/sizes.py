"""Recommended dataset sizes (the original guide's table) and a cost estimate for LLM mode before anything is sent."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from medtune_core.formats.chat import json_text
from medtune_core.synthesis.registry import agent_names, get_agent, resolve_agents
from medtune_core.synthesis.requests import build_messages
from medtune_core.synthesis.templates import generate_template_sample

#: The original guide's (minimum, recommended) samples per agent.
RECOMMENDED_SIZES: dict[str, tuple[int, int]] = {
    "preprocess": (1000, 5000),
    "critic": (500, 2000),
    "check_rag": (500, 2000),
    "diagnosis": (3000, 10000),
    "drug": (2000, 5000),
}
#: Samples per agent of a run that names no size: small enough for a few minutes on 2 CPUs.
DEMO_NUM_SAMPLES = 50
#: Tokens a chat message costs beyond its text (role, separators), as OpenAI counts them.
MESSAGE_OVERHEAD_TOKENS = 4


def recommended_size(agent: str, level: Literal["minimum", "recommended"] = "recommended") -> int:
    """The original guide's size for ``agent``; agents outside the table use their own ``recommended_sizes``."""
    lo, hi = RECOMMENDED_SIZES.get(agent) or get_agent(agent).recommended_sizes
    return lo if level == "minimum" else hi


def sizes_table() -> list[dict[str, Any]]:
    return [
        {"agent": n, "minimum": recommended_size(n, "minimum"), "recommended": recommended_size(n)}
        for n in agent_names()
    ]


def estimate_tokens(text: str) -> int:
    """Rough token count: one token per CJK character (Qwen/GPT tokenizers give ~0.7-1.3), 4 other chars a token."""
    cjk = sum(1 for ch in text if "\u3000" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef")
    return cjk + math.ceil((len(text) - cjk) / 4)


def estimate_message_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    return sum(estimate_tokens(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in messages) + 2


@dataclass
class CostEstimate:
    agent: str
    samples: int
    input_tokens: int
    output_tokens: int
    cost: float | None  # None when no price is known
    currency: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_cost(
    agents: Sequence[str] | str = "all",
    num_samples: int | Mapping[str, int] | None = None,
    *,
    input_price_per_1m: float | None = None,
    output_price_per_1m: float | None = None,
    currency: str | None = None,
    probe: int = 10,
    seed: int = 0,
) -> list[CostEstimate]:
    """Tokens and cost of generating ``num_samples`` per agent through an LLM, before sending anything.

    Input tokens come from the real request messages of ``probe`` sampled inputs; output tokens from the
    template answers to the same inputs (a fair stand-in for a model's answer length). Prices are per
    million tokens (the LLM layer's price table has them; see :func:`estimate_cost_for_model`).
    """

    out = []
    for name in resolve_agents(agents):
        n = (
            num_samples.get(name, recommended_size(name))
            if isinstance(num_samples, Mapping)
            else (num_samples if num_samples is not None else recommended_size(name))
        )
        ins, outs = [], []
        for i in range(probe):
            s = generate_template_sample(name, seed, i)
            ins.append(estimate_message_tokens(build_messages(name, s.input)))
            outs.append(estimate_tokens(json_text(s.output)))
        in_tok = round(sum(ins) / probe * n)
        out_tok = round(sum(outs) / probe * n)
        price = None
        if input_price_per_1m is not None and output_price_per_1m is not None:
            price = round(in_tok / 1e6 * input_price_per_1m + out_tok / 1e6 * output_price_per_1m, 6)
        out.append(CostEstimate(name, n, in_tok, out_tok, price, currency if price is not None else None))
    return out


def estimate_cost_for_model(
    model: str,
    agents: Sequence[str] | str = "all",
    num_samples: int | Mapping[str, int] | None = None,
    **kwargs: Any,
) -> list[CostEstimate]:
    """:func:`estimate_cost` with the prices of ``model`` from the LLM layer's price table (None if unknown)."""
    price = None
    try:
        from medtune_core.llm.pricing import PriceTable

        price = PriceTable.default().lookup(model)
    except ImportError:  # pragma: no cover - the LLM layer is optional for template mode
        price = None
    if price is None:
        return estimate_cost(agents, num_samples, **kwargs)
    return estimate_cost(
        agents,
        num_samples,
        input_price_per_1m=price.input,
        output_price_per_1m=price.output,
        currency=price.currency,
        **kwargs,
    )
