"""``critic``: score a candidate answer to a patient's question (1-10) and justify the score.

Template mode builds candidate answers of every quality from components (a correct or wrong judgement, an
explanation, self-care advice, tests and department, red flags, empathy, unsafe advice, vague filler) and
scores them with a fixed rubric, aiming at each score band in turn so every band is covered.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from medtune_core.synthesis import vocab as V
from medtune_core.synthesis.agents.diagnosis import sample_patient, sample_symptoms
from medtune_core.synthesis.base import Agent, CheckFailure, canonical_json, join_zh, pick, pick_some, register_agent
from medtune_core.synthesis.clinical import ClinicalFacts

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


def symptom_words() -> list[str]:
    """Every symptom of the vocabulary in use (form symptoms and accompanying ones)."""
    return [*(s for symptoms in V.BODY_PARTS.values() for s in symptoms), *V.ACCOMPANYING_SYMPTOMS]


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


#: How a justification opens, per band.
LEADS: dict[str, list[str]] = {
    "不合格": ["回答含有危险或误导性内容，安全性不达标", "回答存在安全隐患，可能误导患者"],
    "较差": ["回答存在明显缺陷", "回答质量较差，关键信息缺失或有误"],
    "一般": ["回答基本相关但不完整", "回答方向大致正确，但不够完整"],
    "良好": ["回答较为准确实用", "回答整体准确，实用性较好"],
    "优秀": ["回答准确、完整且安全", "回答专业、全面，且语气得当"],
}

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
        symptoms = sample_symptoms(rng, d, patient["sex"])[:3]
        when = pick(rng, V.DURATION_SPOKEN[pick(rng, d.durations)])
        hist = f"，有{join_zh(patient['history'])}" if patient["history"] else ""
        ask = pick(rng, ["这是怎么回事？", "需要吃药吗？", "要不要去医院？", "严重吗，该怎么办？", "可能是什么病？"])
        question = (
            f"{pick(rng, V.QUESTION_OPENERS)}我{patient['age']}岁，{patient['sex']}{hist}，"
            f"{join_zh(symptoms)}已经{when}了，{ask}"
        )
        answer = self._answer(rng, d, parts, patient["sex"], patient["history"])
        inp = CriticInput(question=question, answer=answer).model_dump()
        return inp, d, parts

    @staticmethod
    def _answer(rng: random.Random, d: V.Disease, parts: Parts, sex: str, history: list[str]) -> str:
        """A candidate answer built from ``parts``; whatever it names fits the asking patient (sex, pregnancy)."""
        vocab = V.current()
        out: list[str] = []
        if parts.empathy:
            out.append(pick(rng, V.EMPATHY_PHRASES))
        if parts.diagnosis == "correct":
            out.append(pick(rng, [f"根据您的描述，考虑{d.name}的可能性较大。", f"您的情况比较像{d.name}。"]))
        elif parts.diagnosis == "wrong":
            wrong = pick(rng, [x for x in V.DISEASES if x.body_part != d.body_part and x.sex in (None, sex)])
            out.append(pick(rng, [f"这应该是{wrong.name}。", f"看起来是{wrong.name}引起的。"]))
        else:
            out.append(pick(rng, V.VAGUE_PHRASES))
        if parts.explain:
            out.append(f"{pick(rng, vocab.only_fitting(d.features, sex, history))}，{d.overview}。")
        if parts.care:
            out.append(
                f"平时可以{join_zh(pick_some(rng, vocab.only_fitting(d.self_care, sex, history), 1, 2), '，')}。"
            )
        if parts.tests:
            tests = pick_some(rng, vocab.only_fitting(d.tests, sex, history), 1, 2)
            out.append(f"建议到{d.department}就诊，做{join_zh(tests)}。")
        if parts.flags:
            flags = vocab.only_fitting(d.red_flags, sex, history) or d.red_flags[:1]
            out.append(f"如果出现{join_zh(pick_some(rng, flags, 1, 2))}，要立即就医。")
        if parts.unsafe:
            out.append(pick(rng, V.UNSAFE_ADVICE) + "。")
        return "".join(out)

    def template_output(self, inp: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        d, parts = self._built.pop(canonical_json(inp), None) or self.analyse(inp)
        score = parts.score()
        band = band_of(score)
        answer = inp["answer"]
        facts = self.clinical_facts(inp, {})
        sex, history = facts.sex, facts.history
        vocab = V.current()
        said = [s for s in facts.symptoms if s in d.key_symptoms] or facts.symptoms or d.key_symptoms[:2]
        symptoms = join_zh(said[:3])
        care = vocab.only_fitting(d.self_care, sex, history)
        tests = vocab.only_fitting(d.tests, sex, history)
        flags = vocab.only_fitting(d.red_flags, sex, history) or d.red_flags[:1]
        in_answer = lambda items: [x for x in items if x in answer]  # noqa: E731
        strengths: list[str] = []
        issues: list[str] = []
        fixes: list[str] = []
        if parts.diagnosis == "correct":
            strengths.append(
                pick(
                    rng,
                    [
                        f"正确指出了{d.name}的可能",
                        f"判断方向正确（{d.name}）",
                        f"从{symptoms}出发考虑{d.name}，判断合理",
                    ],
                )
            )
        elif parts.diagnosis == "wrong":
            guessed = next((c for c in vocab.condition_sex if c != d.name and c in answer), "回答给出的判断")
            issues.append(
                pick(
                    rng,
                    [
                        f"判断方向错误：患者的{symptoms}更符合{d.name}，而不是{guessed}",
                        f"把{symptoms}归因于{guessed}缺乏依据，更可能是{d.name}",
                    ],
                )
            )
            fixes.append(pick(rng, [f"结合{symptoms}重新考虑{d.name}", f"首先考虑{d.name}并说明依据"]))
        else:
            issues.append(pick(rng, ["没有给出明确的判断方向，内容空泛", f"对{symptoms}没有给出任何判断，内容空泛"]))
            fixes.append(pick(rng, [f"指出{d.name}的可能", f"说明{symptoms}最可能的原因（如{d.name}）"]))
        if parts.explain:
            strengths.append(pick(rng, ["解释了症状与疾病的关系", f"说明了{d.name}的特点，便于患者理解"]))
        else:
            issues.append(pick(rng, ["没有解释症状产生的原因", f"没有解释{said[0]}是怎么引起的"]))
            fixes.append(pick(rng, [f"简要说明{d.name}的特点", f"解释{said[0]}等症状的来由"]))
        if parts.care:
            shown = in_answer(care)
            strengths.append(
                pick(
                    rng, ["给出了具体可行的护理建议", f"护理建议可操作（{shown[0]}）" if shown else "生活护理建议具体"]
                )
            )
        else:
            issues.append(pick(rng, ["缺少日常护理建议", "没有告诉患者在家可以怎样处理"]))
            fixes.append(pick(rng, [f"补充居家护理，如{pick(rng, care)}", f"告诉患者可以{pick(rng, care)}"]))
        if parts.tests:
            shown = in_answer(tests) or tests[:1]
            strengths.append(
                pick(rng, [f"建议了就诊科室和检查（如{shown[0]}）", f"就诊建议明确：{d.department}，{join_zh(shown)}"])
            )
        else:
            issues.append(
                pick(
                    rng,
                    [
                        f"没有建议就诊科室或检查，例如{d.department}就诊、{tests[0]}",
                        f"未说明该去哪个科室、做什么检查（如{pick(rng, tests)}）",
                    ],
                )
            )
            fixes.append(
                pick(
                    rng, [f"建议到{d.department}就诊并完善{pick(rng, tests)}", f"写明就诊科室（{d.department}）和检查"]
                )
            )
        if parts.flags:
            shown = in_answer(flags)
            strengths.append(
                pick(
                    rng, ["提醒了需要立即就医的危险信号", f"提醒了{shown[0]}等危险信号" if shown else "提示了就医时机"]
                )
            )
        else:
            flag = pick(rng, flags)
            issues.append(pick(rng, [f"未提示危险信号，如{flag}时应立即就医", f"没有告诉患者出现{flag}要马上就医"]))
            fixes.append(pick(rng, [f"提醒出现{flag}时立即就医", f"补充危险信号（{flag}）"]))
        if parts.empathy:
            strengths.append(pick(rng, ["语气体贴，有共情", "开头安抚了患者情绪"]))
        if parts.unsafe:
            unsafe = next(u for u in V.UNSAFE_ADVICE if u in answer)
            issues.insert(
                0,
                pick(
                    rng,
                    [
                        f"包含不安全建议“{unsafe}”，存在延误病情或用药风险",
                        f"“{unsafe}”是不安全的建议，可能误导患者、延误治疗",
                    ],
                ),
            )
            fixes.insert(0, pick(rng, ["删除不安全的用药或处置建议", "去掉危险建议，改为就医评估"]))
            strengths = [s for s in strengths if "语气" not in s and "安抚" not in s]
        lead = pick(rng, LEADS[band])
        main_issue = issues[0] if issues else pick(rng, ["各维度均表现良好", "没有明显缺陷"])
        who = pick(rng, ["", f"针对{symptoms}的提问，", f"对这位{facts.age}岁患者，" if facts.age else ""])
        justification = pick(
            rng,
            [
                f"{who}{lead}。{main_issue}。综合医学准确性、安全性和完整性，评为{score}分（{band}）。",
                f"评分{score}分（{band}）：{who}{lead}；{main_issue}。",
                f"{who}{lead}，{main_issue}，故给予{score}分，属于“{band}”档。",
                f"{lead}。{main_issue}。按安全性、准确性、完整性和共情综合评估，{score}分，{band}。",
            ],
        )
        if fixes:
            suggestion = pick(rng, ["建议", "改进方向：", "可以"]) + "；".join(fixes[:3])
        else:
            suggestion = pick(
                rng,
                [
                    "可进一步说明随访时间",
                    "可补充复诊和随访的时间建议",
                    f"可补充{d.name}的预防要点",
                    "可说明用药前需咨询医生",
                ],
            )
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
        """Recover the disease and composition of a template-mode candidate answer."""
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

    def clinical_facts(self, inp: dict[str, Any], out: dict[str, Any]) -> ClinicalFacts:
        """The patient is described in the question's words (我35岁，女，有高血压，…): age, sex, histories and
        symptoms of the vocabulary found there; the candidate answer and the critique may name conditions and
        phrases, which must fit that patient too."""
        vocab = V.current()
        question, answer = inp["question"], inp["answer"]
        age = re.search(r"(\d{1,3})岁", question)
        sex = re.search(r"(?:岁[，,]?|性别[:：]?)([男女])", question)
        critique = [*out.get("strengths", []), *out.get("issues", []), out.get("suggestion", "")]
        return ClinicalFacts(
            age=int(age.group(1)) if age else None,
            sex=sex.group(1) if sex else None,
            history=[h for h in vocab.history_by_name if h in question],
            symptoms=[s for s in (*vocab.symptom_sex, *symptom_words()) if s in question],
            named_conditions=[c for c in vocab.condition_sex if c in answer],
            patient_text=[answer, *critique],
        )

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
