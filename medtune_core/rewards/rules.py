"""The rule reward: reasoning +0.2, a key word such as 建议 / 诊断 / recommend +0.1, answer too short -0.5.

Every number and word is configurable through :class:`RuleConfig`. The bonuses are given once each (two key
words earn +0.1, not +0.2). What counts is the same as in the safety evaluation
(:func:`medtune_core.inference.think.valid_reasoning`):

- the reasoning bonus needs a *closed*, non-empty ``<think>`` block that is not a copy of the prompt (an empty
  ``<think></think>``, a block cut by ``max_new_tokens`` or an echo of the instruction earns nothing);
- key words count in the *answer* only (the text after ``</think>``: what the patient reads), never inside the
  reasoning; the lists are per language, read from ``data/keywords.yaml`` beside this module (``languages``
  picks them, ``keywords`` replaces them, ``keywords_file`` reads another YAML of the same shape);
- "answer too short" is measured on the answer too, so a long reasoning with a two-word answer is still too short,
  and an unclosed block (no answer at all) is too short.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from medtune_core.errors import MedtuneError
from medtune_core.inference.think import split_think, valid_reasoning

KEYWORDS_FILE = Path(__file__).resolve().parent / "data" / "keywords.yaml"


def load_keywords(path: str | Path = KEYWORDS_FILE) -> dict[str, list[str]]:
    """``{language: [word, ...]}`` from a YAML file (the packaged one by default)."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise MedtuneError(f"{p}: cannot read the key words: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(w, str) and w.strip() for w in v) for v in data.values()
    ):
        raise MedtuneError(f"{p}: expected a mapping of language → list of non-empty words")
    return {str(k): [w.strip() for w in v] for k, v in data.items()}


def keyword_pattern(words: list[str]) -> re.Pattern[str] | None:
    """One case-insensitive pattern for ``words``: substrings for CJK words, word starts for Latin-script ones."""
    parts = [rf"\b{re.escape(w)}" if re.match(r"\w", w, re.ASCII) else re.escape(w) for w in words]
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


class RuleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    think_bonus: float = 0.2
    require_think_content: bool = Field(
        True, description="only a closed, non-empty reasoning block not copied from the prompt earns the bonus"
    )
    keywords: list[str] | None = Field(None, description="key words (all languages); None: the packaged lists")
    languages: list[str] = Field(default_factory=lambda: ["zh", "en"], description="packaged key word lists used")
    keywords_file: str | None = Field(None, description="YAML {language: [words]} instead of the packaged one")
    keyword_bonus: float = 0.1
    min_answer_chars: int = Field(10, ge=0, description="answers shorter than this (characters) are too short")
    short_penalty: float = -0.5

    @cached_property
    def keyword_regex(self) -> re.Pattern[str] | None:
        if self.keywords is not None:
            return keyword_pattern(self.keywords)
        lists = load_keywords(self.keywords_file or KEYWORDS_FILE)
        unknown = [lang for lang in self.languages if lang not in lists]
        if unknown:
            raise MedtuneError(f"rule reward: no key words for {unknown}; known languages: {', '.join(lists)}")
        return keyword_pattern([w for lang in self.languages for w in lists[lang]])


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
    """What the patient reads: the text after a closed reasoning block (nothing when the block never closed)."""
    return split_think(text).answer


def has_reasoning(text: str, prompt: str = "", require_content: bool = True) -> bool:
    """The reasoning test of the reward; ``require_content=False`` also pays for an empty or unclosed block."""
    if require_content:
        return valid_reasoning(text, prompt) is not None
    return split_think(text).reasoning is not None


def rule_score(text: str, config: RuleConfig | None = None, prompt: str = "") -> float:
    """The rule reward of one completion (``prompt``: its question, to tell reasoning from an echo of it)."""
    cfg = config or RuleConfig()
    score = 0.0
    if has_reasoning(text, prompt, cfg.require_think_content):
        score += cfg.think_bonus
    answer = answer_part(text)
    rx = cfg.keyword_regex
    if rx is not None and rx.search(answer):
        score += cfg.keyword_bonus
    if len(answer.strip()) < cfg.min_answer_chars:
        score += cfg.short_penalty
    return round(score, 10)


class RuleReward:
    """TRL reward function ``(prompts, completions, **kwargs) -> list[float]`` applying :func:`rule_score`."""

    def __init__(self, config: RuleConfig | dict[str, Any] | None = None, name: str = "rules") -> None:
        self.config = config if isinstance(config, RuleConfig) else RuleConfig.model_validate(config or {})
        self.config.keyword_regex  # noqa: B018  (a bad key word file fails here, not in the middle of training)
        self.__name__ = name

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        prompts = list(prompts) if prompts is not None else []
        return [
            rule_score(completion_text(c), self.config, prompt_text(prompts[i]) if i < len(prompts) else "")
            for i, c in enumerate(completions)
        ]


_DEFAULT = RuleReward()


def rules_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """The rule reward with its default numbers."""
    return _DEFAULT(prompts, completions, **kwargs)
