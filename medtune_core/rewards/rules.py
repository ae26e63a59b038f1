"""Seed 3's rule reward: ``<think>`` present +0.2, a key word such as 建议 / 诊断 +0.1, answer too short -0.5.

Every number and word is configurable through :class:`RuleConfig`. The bonuses are given once each (two key
words earn +0.1, not +0.2). "Answer" means the text after ``</think>`` when there is a reasoning block, so
a long reasoning with a two-word answer is still too short.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

THINK_RE = re.compile(r"<think>(.*?)</think>", re.S)


class RuleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    think_bonus: float = 0.2
    require_think_content: bool = Field(False, description="an empty <think></think> earns nothing")
    keywords: list[str] = Field(default_factory=lambda: ["建议", "诊断"])
    keyword_bonus: float = 0.1
    min_answer_chars: int = Field(10, ge=0, description="answers shorter than this (characters) are too short")
    short_penalty: float = -0.5


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or TRL's conversational ``[{"role": "assistant", "content"}]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, list):
        return "".join(completion_text(m) for m in completion if not isinstance(m, dict) or m.get("role") != "user")
    return str(completion)


def prompt_text(prompt: Any) -> str:
    """A prompt as text (conversational prompts: the turns joined, role-tagged)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt if isinstance(m, dict))
    return str(prompt)


def answer_part(text: str) -> str:
    end = text.rfind("</think>")
    return text[end + len("</think>") :] if end >= 0 else text


def rule_score(text: str, config: RuleConfig | None = None) -> float:
    cfg = config or RuleConfig()
    score = 0.0
    m = THINK_RE.search(text)
    if m and (m.group(1).strip() or not cfg.require_think_content):
        score += cfg.think_bonus
    if any(k in text for k in cfg.keywords):
        score += cfg.keyword_bonus
    if len(answer_part(text).strip()) < cfg.min_answer_chars:
        score += cfg.short_penalty
    return round(score, 10)


class RuleReward:
    """TRL reward function ``(prompts, completions, **kwargs) -> list[float]`` applying :func:`rule_score`."""

    def __init__(self, config: RuleConfig | dict[str, Any] | None = None, name: str = "rules") -> None:
        self.config = config if isinstance(config, RuleConfig) else RuleConfig.model_validate(config or {})
        self.__name__ = name

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return [rule_score(completion_text(c), self.config) for c in completions]


def rules_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Seed 3's rules with their default numbers."""
    return [rule_score(completion_text(c)) for c in completions]
