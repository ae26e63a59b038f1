"""Reward functions in TRL's signature ``f(prompts, completions, **kwargs) -> list[float | None]``, as a registry.

- ``rules``         seed 3's rules (``<think>`` +0.2, key words +0.1, too short -0.5; configurable)
- ``teacher``       an LLM judge with seed 3's rubric through any OpenAI-compatible API, judgements cached
- ``reward_model``  the classifier trained by the ``rm`` stage
- ``length``        a small example: longer answers up to a target length score higher

:func:`build_reward_functions` turns ``[{"name", "weight", "options"}]`` into callables and weights for GRPO/RLOO
(TRL combines them as the weighted sum; default ``R = 0.6 x rules + 0.4 x teacher``). A teacher that cannot
be built (no endpoint or key) is dropped with an ERROR log, and the remaining rewards carry the run: there is
no silent mock. :func:`combine` gives the same weighted sum as one function, for evaluation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune_core.errors import MedtuneError
from medtune_core.rewards.reward_model import RewardModelScorer
from medtune_core.rewards.rules import RuleConfig, RuleReward, completion_text, rule_score, rules_reward
from medtune_core.rewards.teacher import (
    Judgement,
    JudgementStore,
    Rubric,
    TeacherConfig,
    TeacherJudge,
    TeacherUnavailable,
)

log = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float | None]]


@dataclass
class BuiltReward:
    name: str
    func: RewardFunc
    weight: float


def _rules(options: dict[str, Any], **_: Any) -> RewardFunc:
    return RuleReward(options)


def _teacher(options: dict[str, Any], *, judgements_path: Path | None = None, **_: Any) -> RewardFunc:
    return TeacherJudge.from_options(options, judgements_path=options.get("judgements_path", judgements_path))


def _reward_model(options: dict[str, Any], *, reward_model: str | Path | None = None, **_: Any) -> RewardFunc:
    path = options.get("path") or reward_model
    if not path:
        raise MedtuneError("reward_model reward needs options.path or a preceding rm stage")
    return RewardModelScorer(path, **{k: v for k, v in options.items() if k != "path"})


class LengthReward:
    """Answer length (characters) over ``target``, capped at 1."""

    __name__ = "length"

    def __init__(self, target: int = 200) -> None:
        self.target = target

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return [min(1.0, len(completion_text(c)) / self.target) for c in completions]


REWARDS: dict[str, Callable[..., RewardFunc]] = {
    "rules": _rules,
    "teacher": _teacher,
    "reward_model": _reward_model,
    "length": lambda options, **_: LengthReward(**options),
}


def register_reward(name: str, factory: Callable[..., RewardFunc]) -> None:
    """Add a reward: ``factory(options, *, judgements_path=None, reward_model=None) -> reward function``."""
    REWARDS[name] = factory


def build_reward_functions(
    specs: Sequence[Any],
    *,
    reward_model: str | Path | None = None,
    judgements_path: str | Path | None = None,
) -> list[BuiltReward]:
    """Reward functions for ``specs`` (objects or dicts with name, weight, options)."""
    built: list[BuiltReward] = []
    for spec in specs:
        spec = spec if isinstance(spec, dict) else spec.model_dump()
        name, weight, options = spec["name"], float(spec.get("weight", 1.0)), dict(spec.get("options") or {})
        if name not in REWARDS:
            raise MedtuneError(f"unknown reward {name!r}; known: {', '.join(REWARDS)}")
        try:
            func = REWARDS[name](
                options,
                reward_model=reward_model,
                judgements_path=Path(judgements_path) if judgements_path else None,
            )
        except TeacherUnavailable as exc:
            log.error(
                "TEACHER UNAVAILABLE: %s. The teacher reward (weight %.2f) is LEFT OUT of this run; the remaining "
                "rewards (%s) are used. No mock teacher is substituted.",
                exc,
                weight,
                ", ".join(str(s["name"] if isinstance(s, dict) else s.name) for s in specs if s is not spec) or "none",
            )
            continue
        if not getattr(func, "__name__", None):
            func.__name__ = name  # type: ignore[attr-defined]
        built.append(BuiltReward(name, func, weight))
    if not built:
        raise MedtuneError("no reward function could be built (the teacher is unavailable and nothing else is set)")
    return built


def combine(funcs: Sequence[RewardFunc], weights: Sequence[float]) -> RewardFunc:
    """``sum(w_i * r_i)`` per sample, ignoring rewards that are None for it (as TRL does)."""

    def combined(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        columns = [f(prompts, completions, **kwargs) for f in funcs]
        out = []
        for i in range(len(completions)):
            vals = [
                w * c[i] for w, c in zip(weights, columns, strict=True) if c[i] is not None and not math.isnan(c[i])
            ]
            out.append(sum(vals) if vals else float("nan"))
        return out

    combined.__name__ = "combined"
    return combined


__all__ = [
    "REWARDS",
    "BuiltReward",
    "Judgement",
    "JudgementStore",
    "LengthReward",
    "RewardModelScorer",
    "Rubric",
    "RuleConfig",
    "RuleReward",
    "TeacherConfig",
    "TeacherJudge",
    "TeacherUnavailable",
    "build_reward_functions",
    "combine",
    "completion_text",
    "register_reward",
    "rule_score",
    "rules_reward",
]
