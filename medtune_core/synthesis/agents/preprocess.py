"""``preprocess``: turn a symptom form into a structured medical description (the original scripts' example agent)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, Field

from medtune_core.synthesis import vocab as V
from medtune_core.synthesis.agents.diagnosis import sample_background
from medtune_core.synthesis.base import Agent, CheckFailure, join_zh, pick, pick_some, register_agent

DurationCode = Literal["LessThan1Day", "1To3Days", "3To7Days", "MoreThan1Week"]
SeverityLevel = Literal["轻微", "轻度", "中度", "较重", "严重"]
Urgency = Literal["常规就诊", "尽快就诊", "立即急诊"]
EMERGENCY_PARTS = ("胸部", "腹部", "头部")


class PreprocessInput(BaseModel):
    body_part: str = Field(description="不适部位")
    main_symptoms: list[str] = Field(min_length=1, description="主要症状")
    other_symptoms: list[str] = Field(description="其他伴随症状")
    severity: int = Field(ge=1, le=5, description="严重程度 1-5")
    duration: DurationCode
    age: int = Field(ge=0, le=120)
    sex: Literal["男", "女"]
    history: list[str]
    current_drugs: list[str]
    patient_note: str = Field(description="患者的原话补充")


class PreprocessOutput(BaseModel):
    chief_complaint: str = Field(min_length=2, description="主诉：主要症状+持续时间")
    body_part: str
    main_symptoms: list[str] = Field(min_length=1)
    accompanying_symptoms: list[str]
    severity: int = Field(ge=1, le=5)
    severity_level: SeverityLevel
    duration: DurationCode
    duration_text: str
    onset: str
    patient_profile: str
    structured_description: str = Field(min_length=30, description="规范化的病情描述")
    possible_conditions: list[str] = Field(description="需要考虑的疾病方向")
    suggested_department: str = Field(min_length=2)
    urgency: Urgency
    red_flags_to_check: list[str] = Field(min_length=1)
    follow_up_questions: list[str] = Field(min_length=1)


def urgency_for(severity: int, body_part: str, age: int, duration: str) -> str:
    if severity == 5 and body_part in EMERGENCY_PARTS:
        return "立即急诊"
    if severity >= 4 or (age >= 65 and severity >= 3) or (duration == "MoreThan1Week" and severity >= 3):
        return "尽快就诊"
    return "常规就诊"


def matching_diseases(main: list[str], others: list[str], body_part: str, sex: str, limit: int = 3) -> list[V.Disease]:
    """Diseases of this sex that explain at least one main symptom, best overlap first (main symptoms count most,
    then accompanying ones; the same body part breaks ties). A disease matched only by an accompanying symptom
    (乏力 → 流行性感冒 for a woman with 白带异常) is not a direction worth listing."""
    scored = []
    for order, d in enumerate(V.DISEASES):
        if d.sex is not None and d.sex != sex:
            continue
        overlap = sum(1 for s in main if s in d.key_symptoms)
        if overlap:
            extra = sum(1 for s in others if s in d.key_symptoms)
            scored.append((-overlap, -extra, d.body_part != body_part, order, d))
    scored.sort(key=lambda t: t[:4])
    return [t[4] for t in scored[:limit]]


def profile_text(age: int, sex: str, history: list[str], drugs: list[str]) -> str:
    hist = f"既往{join_zh(history)}" if history else V.NO_HISTORY
    meds = f"，正在服用{join_zh(drugs)}" if drugs else ""
    return f"{sex}，{age}岁，{hist}{meds}"


@register_agent
class PreprocessAgent(Agent):
    name = "preprocess"
    title = "症状预处理"
    recommended_sizes = (1000, 5000)
    input_model = PreprocessInput
    output_model = PreprocessOutput
    patient_fields = ("red_flags_to_check", "follow_up_questions")
    system_prompt = (
        "你是智能健康助手的预处理模块。用户通过症状表单提交了不适部位、主要症状、其他症状、严重程度（1-5）和持续时间，"
        "以及年龄、性别、既往史和正在服用的药物。请把这些信息整理成规范的结构化医学描述：写出主诉，"
        "归纳症状、严重程度与病程，给出需要考虑的疾病方向、建议就诊科室和就诊紧急程度，列出需要排查的危险信号，"
        "并提出需要进一步追问的问题。只做信息整理，不下诊断结论。以JSON格式输出。"
    )

    def sample_input(self, rng: random.Random) -> dict[str, Any]:
        part = pick(rng, list(V.BODY_PARTS))
        sex = V.SEX_ONLY_PARTS.get(part) or pick(rng, V.SEXES)
        age = rng.randint(*(V.current().body_parts[part].ages or V.AGE_RANGE))
        main = pick_some(rng, V.BODY_PARTS[part], 1, 3)
        rng.shuffle(main)
        others = pick_some(rng, [s for s in V.ACCOMPANYING_SYMPTOMS if s not in main], 0, 3)
        rng.shuffle(others)
        history, drugs = sample_background(rng, sex, age, p_drugs=0.35)
        severity = rng.randint(1, 5)
        duration = pick(rng, V.DURATION_CODES)
        note = self._note(rng, main, others, severity, duration)
        return PreprocessInput(
            body_part=part,
            main_symptoms=main,
            other_symptoms=others,
            severity=severity,
            duration=duration,
            age=age,
            sex=sex,
            history=history,
            current_drugs=drugs,
            patient_note=note,
        ).model_dump()

    @staticmethod
    def _note(rng: random.Random, main: list[str], others: list[str], severity: int, duration: str) -> str:
        when = pick(rng, V.DURATION_SPOKEN[duration])
        feel = pick(rng, V.SEVERITY_PHRASES[severity])
        extra = f"，还有点{others[0]}" if others and rng.random() < 0.6 else ""
        forms = [
            f"{main[0]}已经{when}了{extra}，{feel}。",
            f"这{when}一直{main[0]}{extra}，{feel}，不知道要不要紧。",
            f"{when}来{join_zh(main, '、')}{extra}，{feel}。",
            f"最近{main[-1]}比较明显，大概有{when}了{extra}。",
        ]
        return pick(rng, forms)

    def template_output(self, inp: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        part, main, others = inp["body_part"], inp["main_symptoms"], inp["other_symptoms"]
        sev, dur, age, sex = inp["severity"], inp["duration"], inp["age"], inp["sex"]
        level, dur_text = V.SEVERITY_LEVELS[sev], V.DURATIONS[dur]
        onset = V.DURATION_ONSET[dur]
        with_others = f"伴{join_zh(others[:2])}" if others else ""
        chief = f"{join_zh(main)}{with_others}{dur_text}"
        profile = profile_text(age, sex, inp["history"], inp["current_drugs"])
        diseases = matching_diseases(main, others, part, sex)
        department = diseases[0].department if diseases and rng.random() < 0.7 else V.DEPARTMENT_BY_PART[part]
        urgency = urgency_for(sev, part, age, dur)

        s_profile = pick(
            rng,
            [f"患者{sex}，{age}岁。", f"{age}岁{sex}性患者。", f"患者，{sex}，{age}岁。"],
        )
        s_hist = (
            pick(rng, [f"既往有{join_zh(inp['history'])}。", f"有{join_zh(inp['history'])}病史。"])
            if inp["history"]
            else pick(rng, ["既往体健。", "否认慢性病史。", ""])
        )
        s_main = pick(
            rng,
            [
                f"{onset}，{dur_text}来出现{part}不适，主要表现为{join_zh(main)}。",
                f"因{join_zh(main)}就诊，病程{dur_text}，属{onset}。",
                f"{part}{join_zh(main)}，持续{dur_text}。",
                f"主要症状为{join_zh(main)}（{part}），已持续{dur_text}。",
            ],
        )
        s_others = (
            pick(rng, [f"伴有{join_zh(others)}。", f"同时有{join_zh(others)}。", f"伴随症状：{join_zh(others)}。"])
            if others
            else pick(rng, ["无明显伴随症状。", "未诉其他不适。"])
        )
        s_sev = pick(
            rng,
            [
                f"自评严重程度{sev}/5（{level}），{pick(rng, V.SEVERITY_PHRASES[sev])}。",
                f"症状程度{level}（{sev}分），{pick(rng, V.SEVERITY_PHRASES[sev])}。",
            ],
        )
        s_drugs = (
            pick(
                rng, [f"目前正在服用{join_zh(inp['current_drugs'])}。", f"长期用药：{join_zh(inp['current_drugs'])}。"]
            )
            if inp["current_drugs"]
            else ""
        )
        s_note = pick(rng, [f"患者自述：“{inp['patient_note']}”", ""])
        description = "".join([s_profile, s_hist, s_main, s_others, s_sev, s_drugs, s_note])

        vocab = V.current()
        flags = pick_some(rng, vocab.only_fitting(V.RED_FLAGS_BY_PART[part], sex, inp["history"]), 2, 3)
        questions = pick_some(rng, vocab.only_fitting(V.FOLLOW_UP_BY_PART[part], sex, inp["history"]), 1, 2)
        questions += pick_some(rng, V.GENERAL_FOLLOW_UPS, 1, 2)
        rng.shuffle(questions)
        return PreprocessOutput(
            chief_complaint=chief,
            body_part=part,
            main_symptoms=list(main),
            accompanying_symptoms=list(others),
            severity=sev,
            severity_level=level,
            duration=dur,
            duration_text=dur_text,
            onset=onset,
            patient_profile=profile,
            structured_description=description,
            possible_conditions=[d.name for d in diseases] or ["需进一步问诊明确"],
            suggested_department=department,
            urgency=urgency,
            red_flags_to_check=flags,
            follow_up_questions=questions,
        ).model_dump()

    def checks(self, inp: dict[str, Any], out: Any) -> Iterator[CheckFailure]:
        o: PreprocessOutput = out
        if not any(s in o.chief_complaint for s in inp["main_symptoms"]):
            yield CheckFailure("chief_complaint", "the chief complaint names none of the main symptoms")
        if o.severity != inp["severity"] or o.duration != inp["duration"] or o.body_part != inp["body_part"]:
            yield CheckFailure("consistency", "severity, duration or body part differ from the input form")
        if sorted(o.main_symptoms) != sorted(inp["main_symptoms"]):
            yield CheckFailure("consistency", "main symptoms differ from the input form")
        if o.severity_level != V.SEVERITY_LEVELS[o.severity]:
            yield CheckFailure("severity_level", f"severity {o.severity} is {V.SEVERITY_LEVELS[o.severity]}")
        if o.severity == 5 and o.urgency == "常规就诊":
            yield CheckFailure("urgency", "severity 5 cannot be a routine visit")
        if o.severity <= 2 and o.urgency == "立即急诊" and o.body_part not in EMERGENCY_PARTS:
            yield CheckFailure("urgency", "mild symptoms marked as an emergency")
        if str(inp["age"]) not in o.structured_description and str(inp["age"]) not in o.patient_profile:
            yield CheckFailure("profile", "the description leaves out the patient's age")
