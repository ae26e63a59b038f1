"""``diagnosis``: a preliminary diagnosis with reasoning, differentials, tests and red flags (the core agent)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, Field

from medtune_core.synthesis import vocab as V
from medtune_core.synthesis.base import Agent, CheckFailure, join_zh, pick, pick_some, register_agent

URGENCY = {"常规": "常规就诊", "尽快就诊": "尽快就诊", "急诊": "立即急诊"}
DISCLAIMER_WORDS = ("医生", "就医", "面诊", "就诊")


class DiagnosisInput(BaseModel):
    age: int = Field(ge=0, le=120)
    sex: Literal["男", "女"]
    symptoms: list[str] = Field(min_length=1)
    symptom_details: list[str]
    duration: Literal["LessThan1Day", "1To3Days", "3To7Days", "MoreThan1Week"]
    severity: int = Field(ge=1, le=5)
    history: list[str]
    current_drugs: list[str]
    vitals: dict[str, str]
    question: str


class Differential(BaseModel):
    disease: str = Field(min_length=2)
    reason: str = Field(min_length=6, description="鉴别要点")


class DiagnosisOutput(BaseModel):
    preliminary_diagnosis: str = Field(min_length=2)
    confidence: Literal["高", "中", "低"]
    reasoning: str = Field(min_length=30)
    differential_diagnosis: list[Differential] = Field(min_length=2)
    recommended_tests: list[str] = Field(min_length=1)
    red_flags: list[str] = Field(min_length=1, description="需要立即就医的危险信号")
    urgency: Literal["常规就诊", "尽快就诊", "立即急诊"]
    department: str = Field(min_length=2)
    advice: list[str] = Field(min_length=1)
    disclaimer: str = Field(min_length=8)


def fitting(texts: list[str], sex: str, history: list[str]) -> list[str]:
    """The phrases that may describe this patient (none for the other sex, none for a state they are not in)."""
    return V.current().only_fitting(texts, sex, history)


def red_flags_for(d: V.Disease, history: list[str], sex: str | None = None) -> list[str]:
    """The disease's red flags that apply to this patient (pregnancy ones only in pregnancy, none of the other sex)."""
    return V.current().only_fitting(d.red_flags, sex, history) or d.red_flags[:1]


def sample_background(
    rng: random.Random, sex: str, age: int, p_history: float = 0.45, p_drugs: float = 0.3
) -> tuple[list[str], list[str]]:
    """Past history and current drugs of a patient: histories their sex and age allow, and drugs taken for one of
    their histories (a drug that needs one brings it along: 氨氯地平 comes with 高血压)."""
    vocab = V.current()
    options = vocab.histories_for(sex, age)
    history = pick_some(rng, options, 1, 2) if rng.random() < p_history else []
    drugs = []
    for name in pick_some(rng, list(V.CURRENT_DRUGS), 1, 2) if rng.random() < p_drugs else []:
        needs = [h for h in vocab.current_drug_by_name[name].for_histories if h in options]
        if not needs and vocab.current_drug_by_name[name].for_histories:
            continue  # taken only for histories this patient cannot have
        if needs and not set(needs) & set(history):
            history.append(pick(rng, needs))
        drugs.append(name)
    return history, drugs


def sample_patient(rng: random.Random, d: V.Disease) -> dict[str, Any]:
    """Age, sex, history and current drugs of a patient who could have ``d`` (see :func:`sample_background`)."""
    sex = d.sex or pick(rng, V.SEXES)
    age = rng.randint(*d.ages)
    history, drugs = sample_background(rng, sex, age)
    return {"age": age, "sex": sex, "history": history, "current_drugs": drugs}


def sample_symptoms(rng: random.Random, d: V.Disease, sex: str | None = None) -> list[str]:
    """Two to four of the disease's key symptoms, then up to two accompanying ones (none of the other sex)."""
    symptoms = pick_some(rng, d.key_symptoms, min(2, len(d.key_symptoms)), 4)
    rng.shuffle(symptoms)
    extra = pick_some(rng, [s for s in V.ACCOMPANYING_SYMPTOMS if s not in symptoms], 0, 2)
    return symptoms + V.current().only_fitting(extra, sex)


def sample_vitals(rng: random.Random, d: V.Disease, symptoms: list[str], history: list[str]) -> dict[str, str]:
    febrile = "发热" in symptoms or "高热" in symptoms or "低热" in symptoms
    temp = rng.randint(376, 399) if febrile else rng.randint(362, 372)
    if d.name == "原发性高血压" or "高血压" in history:
        sbp, dbp = rng.randint(140, 178), rng.randint(88, 106)
    else:
        sbp, dbp = rng.randint(105, 138), rng.randint(64, 88)
    hr = rng.randint(88, 118) if febrile or d.name == "甲状腺功能亢进症" else rng.randint(60, 96)
    vitals = {"体温": f"{temp / 10:.1f}℃", "血压": f"{sbp}/{dbp}mmHg", "心率": f"{hr}次/分"}
    if rng.random() < 0.3:
        vitals.pop("血压")
    return vitals


def spoken_question(rng: random.Random, symptoms: list[str], duration: str) -> str:
    forms = [
        "这是什么病？需要做什么检查？",
        "请问可能是什么问题，严不严重？",
        "需要去医院吗？挂什么科？",
        "想知道可能的原因和处理办法。",
        "是不是得了什么大病？",
    ]
    when = pick(rng, V.DURATION_SPOKEN[duration])
    return f"{pick(rng, V.QUESTION_OPENERS)}最近{when}一直{join_zh(symptoms[:3], '、')}，{pick(rng, forms)}"


@register_agent
class DiagnosisAgent(Agent):
    name = "diagnosis"
    title = "初步诊断"
    recommended_sizes = (3000, 10000)
    input_model = DiagnosisInput
    output_model = DiagnosisOutput
    patient_fields = ("red_flags", "recommended_tests", "advice")
    system_prompt = (
        "你是智能健康助手的诊断模块，具备全科医生的临床思维。请根据患者的年龄、性别、症状、病程、严重程度、"
        "既往史、用药和生命体征，给出最可能的初步诊断及把握程度，说明推理依据，列出至少两个需要鉴别的疾病及鉴别要点，"
        "建议进一步检查、就诊科室和紧急程度，写明需要立即就医的危险信号和日常处理建议，并提示线上建议不能替代面诊。"
        "以JSON格式输出。"
    )

    def sample_input(self, rng: random.Random) -> dict[str, Any]:
        d = pick(rng, V.DISEASES)
        patient = sample_patient(rng, d)
        symptoms = sample_symptoms(rng, d, patient["sex"])
        duration = pick(rng, d.durations)
        return DiagnosisInput(
            **patient,
            symptoms=symptoms,
            symptom_details=pick_some(rng, fitting(d.features, patient["sex"], patient["history"]), 1, 2),
            duration=duration,
            severity=rng.randint(*d.severity),
            vitals=sample_vitals(rng, d, symptoms, patient["history"]),
            question=spoken_question(rng, symptoms, duration),
        ).model_dump()

    @staticmethod
    def disease_of(inp: dict[str, Any]) -> V.Disease:
        """The disease whose features the input shows (features are unique per disease)."""
        for d in V.DISEASES:
            if any(f in d.features for f in inp["symptom_details"]):
                return d
        best = max(V.DISEASES, key=lambda d: sum(s in d.key_symptoms for s in inp["symptoms"]))
        return best

    def template_output(self, inp: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        d = self.disease_of(inp)
        matched = [s for s in inp["symptoms"] if s in d.key_symptoms]
        n_details = len(inp["symptom_details"])
        confidence = "高" if len(matched) >= 3 and n_details >= 2 else ("低" if len(matched) <= 1 else "中")
        urgency = URGENCY[d.urgency]
        if inp["severity"] == 5 and urgency == "常规就诊":
            urgency = "尽快就诊"
        dur = V.DURATIONS[inp["duration"]]
        vitals = "，".join(f"{k}{v}" for k, v in inp["vitals"].items())
        hist = f"，既往{join_zh(inp['history'])}" if inp["history"] else ""
        opening = pick(
            rng,
            [
                f"患者{inp['sex']}，{inp['age']}岁{hist}，",
                f"{inp['age']}岁{inp['sex']}性{hist}，",
                f"结合患者（{inp['sex']}，{inp['age']}岁{hist}）的情况，",
            ],
        )
        shown = join_zh(matched or inp["symptoms"])
        core = pick(
            rng,
            [
                f"病程{dur}，出现{shown}，{join_zh(inp['symptom_details'], '，')}，",
                f"主要表现为{shown}，病程{dur}，{join_zh(inp['symptom_details'], '；')}，",
            ],
        )
        vit = pick(rng, [f"查体{vitals}，", f"生命体征：{vitals}，", f"测得{vitals}，"])
        level = V.SEVERITY_LEVELS[inp["severity"]]
        vit += pick(rng, ["", f"自评症状{level}，", f"目前症状程度为{level}，"])
        verdict = pick(
            rng,
            [
                f"符合{d.name}的典型表现。",
                f"首先考虑{d.name}。",
                f"临床表现与{d.name}最为吻合。",
                f"综合分析，{d.name}可能性最大。",
                f"初步判断为{d.name}，需进一步检查证实。",
            ],
        )
        reasoning = opening + core + vit + verdict + pick(rng, [d.overview + "。", ""])
        if inp["history"]:
            reasoning += pick(
                rng,
                [
                    f"既往{join_zh(inp['history'])}，诊疗时需一并考虑。",
                    f"合并{join_zh(inp['history'])}，用药和检查需兼顾。",
                    "",
                ],
            )
        if inp["current_drugs"]:
            reasoning += pick(
                rng,
                [
                    f"目前服用{join_zh(inp['current_drugs'])}，用药调整需咨询医生。",
                    f"正在使用{join_zh(inp['current_drugs'])}，就诊时请告知医生。",
                ],
            )
        vocab = V.current()
        sex, history = inp["sex"], inp["history"]
        diffs = [
            (
                x.name,
                pick(rng, ["{r}", "鉴别要点：{r}", "{r}，可据此与{d}区分", "与{d}不同，{r}"]).format(
                    r=x.reason, d=d.name
                ),
            )
            for x in pick_some(
                rng, [x for x in d.differentials if vocab.condition_sex.get(x.name) in (None, sex)], 2, 3
            )
        ]
        flags = pick_some(rng, red_flags_for(d, history, sex), 2, 4)
        advice = pick_some(rng, fitting(d.self_care, sex, history), 1, 3) + pick_some(rng, V.GENERAL_ADVICE, 0, 1)
        rng.shuffle(advice)
        advice.append(
            pick(
                rng,
                [
                    f"建议到{d.department}就诊，完善{d.tests[0]}等检查",
                    f"尽早到{d.department}门诊明确诊断",
                    f"如症状持续或加重，请到{d.department}就诊",
                    f"{pick(rng, ['尽快', '近期', '及时'])}到{d.department}就诊，遵医嘱完善检查",
                ],
            )
        )
        disclaimer = pick(
            rng,
            [
                "以上为根据描述作出的初步判断，不能替代医生面诊，请以医院检查结果为准。",
                "线上分析仅供参考，确诊需由医生面诊并结合检查结果。",
                "本建议不能代替医生诊断，如有不适请及时就医。",
                "以上内容基于您提供的信息，仅供参考，最终诊断请以医生面诊为准。",
                "网上问诊无法进行体格检查，请尽快到医院由医生面诊确认。",
            ],
        )
        return DiagnosisOutput(
            preliminary_diagnosis=d.name,
            confidence=confidence,
            reasoning=reasoning,
            differential_diagnosis=[Differential(disease=n, reason=r) for n, r in diffs],
            recommended_tests=pick_some(rng, fitting(d.tests, sex, history), 1, len(d.tests)),
            red_flags=flags,
            urgency=urgency,
            department=d.department,
            advice=advice,
            disclaimer=disclaimer,
        ).model_dump()

    def checks(self, inp: dict[str, Any], out: Any) -> Iterator[CheckFailure]:
        o: DiagnosisOutput = out
        names = [x.disease for x in o.differential_diagnosis]
        if len(set(names)) < 2:
            yield CheckFailure("differentials", "fewer than two distinct differential diagnoses")
        if o.preliminary_diagnosis in names:
            yield CheckFailure("differentials", "the preliminary diagnosis is listed as its own differential")
        if not any(s in o.reasoning for s in inp["symptoms"]):
            yield CheckFailure("reasoning", "the reasoning cites none of the patient's symptoms")
        if not any(w in o.disclaimer for w in DISCLAIMER_WORDS):
            yield CheckFailure("disclaimer", "the disclaimer does not refer the patient to a doctor")
        if inp["severity"] == 5 and o.urgency == "常规就诊":
            yield CheckFailure("urgency", "severity 5 cannot be a routine visit")
