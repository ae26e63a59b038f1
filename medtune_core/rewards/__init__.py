"""Reward functions in TRL's signature ``f(prompts, completions, **kwargs) -> list[float | None]``, as a registry.

- ``rules``         the reasoning-RL rules (``<think>`` +0.2, key words +0.1, too short -0.5; configurable)
- ``teacher``       an LLM judge with the reasoning-RL rubric through any OpenAI-compatible API, judgements cached
- ``reward_model``  the classifier trained by the ``rm`` stage
- ``length``        a small example: longer answers up to a target length score higher

:func:`build_reward_functions` turns ``[{"name", "weight", "options"}]`` into callables and weights for GRPO/RLOO
(TRL combines them as the weighted sum; default ``R = 0.6 x rules + 0.4 x teacher``). A teacher that cannot
be had at start (no endpoint or key, unreachable, key refused) fails the stage when its options say
``required: true``; otherwise it is left out with a WARNING and listed in the stage's metrics
(``rewards_left_out``). There is no silent mock.

A value a reward cannot compute for one sample (a lost teacher judgement) is ``None``. TRL sums the weighted
components with ``nansum``, which scores that sample as if the teacher had given 0 while its group peers get
their teacher grade: the worst grade for a network error. :class:`GroupMaskedReward` instead leaves the component
out for the sample's whole group (the completions of one prompt, compared with each other), so the group is
compared on the components every member has, and counts what it left out. :func:`combine` gives the weighted
sum as one function, for evaluation.
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


class GroupMaskedReward:
    """A reward function whose missing values (None / NaN) leave it out of the sample's whole group.

    TRL calls a reward with the process' generation batch, in which the ``group_size`` completions of one prompt
    are consecutive (the stage requires per-device batch x accumulation to be a multiple of the group).
    """

    def __init__(self, func: RewardFunc, name: str, group_size: int) -> None:
        self.func, self.group_size, self.__name__ = func, group_size, name
        self.samples = self.missing = self.groups = self.groups_left_out = 0

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        values: list[float | None] = list(self.func(prompts, completions, **kwargs))
        missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in values]
        self.samples += len(values)
        self.missing += sum(missing)
        for start in range(0, len(values), self.group_size):
            self.groups += 1
            if any(missing[start : start + self.group_size]):
                self.groups_left_out += 1
                values[start : start + self.group_size] = [None] * len(values[start : start + self.group_size])
        return values

    def report(self) -> dict[str, Any]:
        out = {
            "samples": self.samples,
            "missing": self.missing,
            "groups": self.groups,
            "groups_left_out": self.groups_left_out,
        }
        inner = getattr(self.func, "report", None)
        return {**out, **inner()} if callable(inner) else out


def build_reward_functions(
    specs: Sequence[Any],
    *,
    reward_model: str | Path | None = None,
    judgements_path: str | Path | None = None,
    left_out: list[dict[str, Any]] | None = None,
) -> list[BuiltReward]:
    """Reward functions for ``specs`` (objects or dicts with name, weight, options); a teacher that cannot be had
    is left out (and appended to ``left_out``) unless its options say ``required: true``."""
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
            if options.get("required"):
                raise MedtuneError(f"reward {name} is required but unavailable: {exc}") from None
            log.warning(
                "TEACHER UNAVAILABLE: %s. The %s reward (weight %.2f) is LEFT OUT of this run; the remaining "
                "rewards are used. No mock teacher is substituted (set options.required: true to fail instead).",
                exc,
                name,
                weight,
            )
            if left_out is not None:
                left_out.append({"name": name, "weight": weight, "reason": str(exc)})
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
    "GroupMaskedReward",
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
