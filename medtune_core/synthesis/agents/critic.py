"""``critic``: score a candidate answer to a patient's question (1-10) and justify the score.

Seed mode builds candidate answers of every quality from components (a correct or wrong judgement, an
explanation, self-care advice, tests and department, red flags, empathy, unsafe advice, vague filler) and
scores them with a fixed rubric, aiming at each score band in turn so every band is covered.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from medtune_core.synthesis import vocab as V
from medtune_core.synthesis.agents.diagnosis import sample_patient, sample_symptoms
from medtune_core.synthesis.base import Agent, CheckFailure, canonical_json, join_zh, pick, pick_some, register_agent

Band = Literal["不合格", "较差", "一般", "良好", "优秀"]
#: Score band → inclusive score range.
BANDS: dict[str, tuple[int, int]] = {
    "不合格": (1, 2),
    "较差": (3, 4),
    "一般": (5, 6),
    "良好": (7, 8),
    "优秀": (9, 10),
}
SAFETY_WORDS = ("安全", "危险", "误导", "风险", "延误")


def band_of(score: int) -> str:
    for band, (lo, hi) in BANDS.items():
        if lo <= score <= hi:
            return band
    raise ValueError(f"score {score} outside 1-10")


class CriticInput(BaseModel):
    question: str = Field(min_length=5)
    answer: str = Field(min_length=5)


class CriticOutput(BaseModel):
    score: int = Field(ge=1, le=10)
    band: Band
    strengths: list[str]
    issues: list[str]
    justification: str = Field(min_length=20)
    suggestion: str = Field(min_length=4)


@dataclass
class Parts:
    """What a candidate answer contains; the rubric scores these."""

    diagnosis: str  # "correct" | "wrong" | "none"
    explain: bool
    care: bool
    tests: bool
    flags: bool
    empathy: bool
    unsafe: bool

    def score(self) -> int:
        if self.unsafe:
            return 2 if self.diagnosis == "correct" else 1
        s = 10
        s -= {"correct": 0, "wrong": 5, "none": 3}[self.diagnosis]
        s -= 0 if self.explain else 1
        s -= 0 if self.care else 1
        s -= 0 if self.tests else 2
        s -= 0 if self.flags else 2
        if s == 10 and not self.empathy:
            s = 9
        return max(3, s)


INCLUDE_P = {"优秀": 0.95, "良好": 0.75, "一般": 0.5, "较差": 0.3, "不合格": 0.5}


def sample_parts(rng: random.Random, band: str) -> Parts:
    """Components whose rubric score falls into ``band`` (rejection sampling, deterministic in ``rng``)."""
    p = INCLUDE_P[band]
    lo, hi = BANDS[band]
    for _ in range(500):
        diag_roll = rng.random()
        parts = Parts(
            diagnosis="correct" if diag_roll < p else ("wrong" if diag_roll < p + (1 - p) / 2 else "none"),
            explain=rng.random() < p,
            care=rng.random() < p,
            tests=rng.random() < p,
            flags=rng.random() < p,
            empathy=rng.random() < p,
            unsafe=band == "不合格",
        )
        if lo <= parts.score() <= hi:
            return parts
    raise AssertionError(f"no answer composition for band {band}")  # pragma: no cover


@register_agent
class CriticAgent(Agent):
    name = "critic"
    title = "回答质量评审"
    recommended_sizes = (500, 2000)
    input_model = CriticInput
    output_model = CriticOutput
    system_prompt = (
        "你是智能健康助手的质量评审模块。请评估候选回答对患者问题的质量，按1-10分打分："
        "1-2分不合格（含有危险或误导性建议），3-4分较差（判断错误或缺少关键信息），5-6分一般，7-8分良好，"
        "9-10分优秀（判断准确、解释清楚、建议可行、提示了检查和危险信号且语气体贴）。"
        "评估维度：医学准确性、安全性、完整性（检查建议与危险信号）、可操作性和共情。"
        "请给出分数与对应档次、回答的优点、存在的问题、评分理由和改进建议。以JSON格式输出。"
    )

    def __init__(self) -> None:
        super().__init__()
        # what each freshly sampled answer was built from, keyed by its input, consumed by template_output
        self._built: dict[str, tuple[V.Disease, Parts]] = {}

    def sample_input(self, rng: random.Random) -> dict[str, Any]:
        inp, d, parts = self._sample(rng)
        if len(self._built) > 10_000:
            self._built.clear()
        self._built[canonical_json(inp)] = (d, parts)
        return inp

    def _sample(self, rng: random.Random) -> tuple[dict[str, Any], V.Disease, Parts]:
        d = pick(rng, V.DISEASES)
        band = pick(rng, list(BANDS))
        parts = sample_parts(rng, band)
        patient = sample_patient(rng, d)
        symptoms = sample_symptoms(rng, d)[:3]
        when = pick(rng, V.DURATION_SPOKEN[pick(rng, d.durations)])
        hist = f"，有{join_zh(patient['history'])}" if patient["history"] else ""
        ask = pick(rng, ["这是怎么回事？", "需要吃药吗？", "要不要去医院？", "严重吗，该怎么办？", "可能是什么病？"])
        question = (
            f"{pick(rng, V.QUESTION_OPENERS)}我{patient['age']}岁，{patient['sex']}{hist}，"
            f"{join_zh(symptoms)}已经{when}了，{ask}"
        )
        answer = self._answer(rng, d, parts)
        inp = CriticInput(question=question, answer=answer).model_dump()
        return inp, d, parts

    @staticmethod
    def _answer(rng: random.Random, d: V.Disease, parts: Parts) -> str:
        out: list[str] = []
        if parts.empathy:
            out.append(pick(rng, V.EMPATHY_PHRASES))
        if parts.diagnosis == "correct":
            out.append(pick(rng, [f"根据您的描述，考虑{d.name}的可能性较大。", f"您的情况比较像{d.name}。"]))
        elif parts.diagnosis == "wrong":
            wrong = pick(rng, [x for x in V.DISEASES if x.body_part != d.body_part])
            out.append(pick(rng, [f"这应该是{wrong.name}。", f"看起来是{wrong.name}引起的。"]))
        else:
            out.append(pick(rng, V.VAGUE_PHRASES))
        if parts.explain:
            out.append(f"{pick(rng, d.features)}，{d.overview}。")
        if parts.care:
            out.append(f"平时可以{join_zh(pick_some(rng, d.self_care, 1, 2), '，')}。")
        if parts.tests:
            out.append(f"建议到{d.department}就诊，做{join_zh(pick_some(rng, d.tests, 1, 2))}。")
        if parts.flags:
            out.append(f"如果出现{join_zh(pick_some(rng, d.red_flags, 1, 2))}，要立即就医。")
        if parts.unsafe:
            out.append(pick(rng, V.UNSAFE_ADVICE) + "。")
        return "".join(out)

    def template_output(self, inp: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        d, parts = self._built.pop(canonical_json(inp), None) or self.analyse(inp)
        score = parts.score()
        band = band_of(score)
        strengths: list[str] = []
        issues: list[str] = []
        if parts.diagnosis == "correct":
            strengths.append(pick(rng, [f"正确指出了{d.name}的可能", f"判断方向正确（{d.name}）"]))
        elif parts.diagnosis == "wrong":
            issues.append(f"判断方向错误：患者的表现更符合{d.name}，回答给出的判断缺乏依据")
        else:
            issues.append("没有给出明确的判断方向，内容空泛")
        if parts.explain:
            strengths.append("解释了症状与疾病的关系")
        else:
            issues.append("没有解释症状产生的原因")
        if parts.care:
            strengths.append(pick(rng, ["给出了具体可行的护理建议", "生活护理建议具体"]))
        else:
            issues.append(pick(rng, ["缺少日常护理建议", "没有告诉患者在家可以怎样处理"]))
        if parts.tests:
            strengths.append(f"建议了就诊科室和检查（如{d.tests[0]}）")
        else:
            issues.append(f"没有建议就诊科室或检查，例如{d.department}就诊、{d.tests[0]}")
        if parts.flags:
            strengths.append("提醒了需要立即就医的危险信号")
        else:
            issues.append(f"未提示危险信号，如{pick(rng, d.red_flags)}时应立即就医")
        if parts.empathy:
            strengths.append("语气体贴，有共情")
        if parts.unsafe:
            unsafe = next(u for u in V.UNSAFE_ADVICE if u in inp["answer"])
            issues.insert(0, f"包含不安全建议“{unsafe}”，存在延误病情或用药风险")
            strengths = [s for s in strengths if "语气" not in s]
        lead = {
            "不合格": "回答含有危险或误导性内容，安全性不达标",
            "较差": "回答存在明显缺陷",
            "一般": "回答基本相关但不完整",
            "良好": "回答较为准确实用",
            "优秀": "回答准确、完整且安全",
        }[band]
        main_issue = issues[0] if issues else "各维度均表现良好"
        justification = pick(
            rng,
            [
                f"{lead}。{main_issue}。综合医学准确性、安全性和完整性，评为{score}分（{band}）。",
                f"评分{score}分（{band}）：{lead}；{main_issue}。",
                f"{lead}，{main_issue}，故给予{score}分，属于“{band}”档。",
            ],
        )
        if issues:
            suggestion = pick(rng, ["建议补充：", "改进方向："]) + "；".join(i.split("：")[-1] for i in issues[:3])
        else:
            suggestion = pick(rng, ["可进一步说明随访时间", "可补充复诊和随访的时间建议"])
        return CriticOutput(
            score=score,
            band=band,
            strengths=strengths,
            issues=issues,
            justification=justification,
            suggestion=suggestion,
        ).model_dump()

    @staticmethod
    def analyse(inp: dict[str, Any]) -> tuple[V.Disease, Parts]:
        """Recover the disease and composition of a seed-mode candidate answer (template mode only)."""
        answer, question = inp["answer"], inp["question"]
        # the disease is the one whose symptoms the question lists and whose text the answer uses
        candidates = [d for d in V.DISEASES if any(s in question for s in d.key_symptoms)] or V.DISEASES
        d = max(
            candidates,
            key=lambda d: (
                d.name in answer and any(p in answer for p in (f"考虑{d.name}", f"比较像{d.name}")),
                sum(t in answer for t in [d.overview, *d.self_care, *d.tests, *d.red_flags, d.department]),
            ),
        )
        correct = f"考虑{d.name}" in answer or f"比较像{d.name}" in answer
        wrong = any(f"应该是{x.name}" in answer or f"是{x.name}引起" in answer for x in V.DISEASES)
        parts = Parts(
            diagnosis="correct" if correct else ("wrong" if wrong else "none"),
            explain=d.overview in answer,
            care=any(c in answer for c in d.self_care),
            tests=f"建议到{d.department}就诊" in answer,
            flags="要立即就医" in answer,
            empathy=any(answer.startswith(e) for e in V.EMPATHY_PHRASES),
            unsafe=any(u in answer for u in V.UNSAFE_ADVICE),
        )
        return d, parts

    def checks(self, inp: dict[str, Any], out: Any) -> Iterator[CheckFailure]:
        o: CriticOutput = out
        lo, hi = BANDS[o.band]
        if not lo <= o.score <= hi:
            yield CheckFailure("band", f"score {o.score} is outside band {o.band} ({lo}-{hi})")
        if o.score <= 8 and not o.issues:
            yield CheckFailure("justified", f"score {o.score} without any issue named")
        if o.score >= 5 and not o.strengths:
            yield CheckFailure("justified", f"score {o.score} without any strength named")
        if o.score <= 2 and not any(w in " ".join(o.issues) + o.justification for w in SAFETY_WORDS):
            yield CheckFailure("justified", "a failing score must name the safety problem")
        if str(o.score) not in o.justification and o.band not in o.justification:
            yield CheckFailure("justified", "the justification does not state the score or band")
