"""``drug``: medication advice for a condition, respecting the patient's contraindications and current drugs."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, Field

from medtune_core.synthesis import vocab as V
from medtune_core.synthesis.agents.diagnosis import red_flags_for, sample_patient, sample_symptoms
from medtune_core.synthesis.base import Agent, CheckFailure, join_zh, pick, pick_some, register_agent

FOLLOW_ORDERS = "遵医嘱"


class DrugInput(BaseModel):
    age: int = Field(ge=0, le=120)
    sex: Literal["男", "女"]
    condition: str = Field(min_length=2, description="已明确或医生考虑的疾病")
    symptoms: list[str] = Field(min_length=1)
    history: list[str] = Field(description="既往史、过敏史、妊娠或哺乳状态")
    current_drugs: list[str]
    question: str


class DrugRecommendation(BaseModel):
    drug: str = Field(min_length=2)
    category: Literal["非处方药", "处方药"]
    purpose: str = Field(min_length=2)
    usage: str = Field(min_length=6)
    cautions: list[str]


class AvoidedDrug(BaseModel):
    drug: str
    reason: str = Field(min_length=4)


class DrugOutput(BaseModel):
    assessment: str = Field(min_length=10)
    recommendations: list[DrugRecommendation]
    not_recommended: list[AvoidedDrug]
    contraindications: list[str] = Field(min_length=1)
    interactions: list[str]
    non_drug_advice: list[str] = Field(min_length=1)
    when_to_see_doctor: str = Field(min_length=6)
    disclaimer: str = Field(min_length=6)


def blocking(drug: V.Drug, history: list[str]) -> list[str]:
    """The patient's conditions that rule the drug out."""
    return [h for h in history if h in drug.contraindications]


@register_agent
class DrugAgent(Agent):
    name = "drug"
    title = "用药建议"
    recommended_sizes = (2000, 5000)
    input_model = DrugInput
    output_model = DrugOutput
    system_prompt = (
        "你是智能健康助手的用药建议模块，具备临床药师的专业知识。请根据患者的疾病或症状、年龄、性别、既往史、"
        "过敏史、妊娠哺乳状态和正在服用的药物，给出用药建议：推荐药物的类别（非处方药/处方药）、用途、常用成人剂量和注意事项；"
        "列出禁忌证，指出该患者不宜使用的药物及原因，提示药物相互作用，给出非药物措施和需要就医的情况。"
        "处方药必须由医生开具，所有建议须提醒患者遵医嘱并阅读说明书。以JSON格式输出。"
    )

    def sample_input(self, rng: random.Random) -> dict[str, Any]:
        with_drugs = [d for d in V.DISEASES if d.drugs]
        d = pick(rng, with_drugs) if rng.random() < 0.88 else pick(rng, [d for d in V.DISEASES if not d.drugs])
        patient = sample_patient(rng, d)
        if patient["sex"] == "女" and 20 <= patient["age"] <= 45 and rng.random() < 0.2:
            patient["history"] = [*patient["history"], pick(rng, V.FEMALE_STATES)]
        if rng.random() < 0.35 and d.drugs:  # make contraindications frequent enough to learn from
            drug = V.DRUG_BY_NAME[pick(rng, d.drugs)]
            fits = [c for c in drug.contraindications if c not in V.FEMALE_STATES or patient["sex"] == "女"]
            chosen = pick(rng, fits) if fits else None
            if chosen and chosen not in patient["history"]:
                patient["history"] = [*patient["history"], chosen]
        if "妊娠期" in patient["history"] and "哺乳期" in patient["history"]:
            patient["history"].remove("哺乳期")
        symptoms = sample_symptoms(rng, d)[:3]
        asks = [
            f"医生说是{d.name}，我该吃什么药？",
            f"得了{d.name}，家里能备点什么药？",
            f"{d.name}吃什么药好得快，有什么要注意的？",
            f"被诊断为{d.name}，{join_zh(symptoms[:2])}很难受，能用什么药缓解？",
        ]
        return DrugInput(
            **patient,
            condition=d.name,
            symptoms=symptoms,
            question=pick(rng, V.QUESTION_OPENERS) + pick(rng, asks),
        ).model_dump()

    def template_output(self, inp: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        d = V.DISEASE_BY_NAME[inp["condition"]]
        history, current = inp["history"], inp["current_drugs"]
        current_classes = {c: V.CURRENT_DRUGS[c] for c in current if c in V.CURRENT_DRUGS}
        recs: list[DrugRecommendation] = []
        avoided: list[AvoidedDrug] = []
        contra: list[str] = []
        interactions: list[str] = []
        for name in d.drugs:
            drug = V.DRUG_BY_NAME[name]
            blocked = blocking(drug, history)
            if blocked:
                avoided.append(AvoidedDrug(drug=name, reason=f"患者有{join_zh(blocked)}，{name}禁用或不宜使用"))
                continue
            hits = [(c, drug.interactions[k]) for c, k in current_classes.items() if k in drug.interactions]
            if any("应避免" in effect for _, effect in hits):
                c, effect = next((c, e) for c, e in hits if "应避免" in e)
                avoided.append(AvoidedDrug(drug=name, reason=f"正在服用{c}：{effect}"))
                continue
            for c, effect in hits:
                interactions.append(f"{name}与{c}：{effect}")
            cautions = pick_some(rng, drug.cautions, 1, len(drug.cautions)) + drug.notes[:1]
            careful = [h for h in history if h in drug.caution_histories]
            if careful:
                cautions.insert(0, f"患者有{join_zh(careful)}，使用前请先咨询医生")
            usage = drug.dosing
            if drug.category == "处方药":
                usage = f"{usage}（处方药，须由医生开具，{FOLLOW_ORDERS}）"
            elif inp["age"] >= 65 and not drug.topical:
                usage = f"{usage}；老年人宜从小剂量开始"
            purpose = join_zh([i for i in drug.indications if i in inp["symptoms"] or i in d.name][:2]) or (
                f"{drug.drug_class}，用于{join_zh(drug.indications[:2])}"
            )
            recs.append(
                DrugRecommendation(drug=name, category=drug.category, purpose=purpose, usage=usage, cautions=cautions)
            )
            contra.append(
                f"{name}：{join_zh(drug.contraindications)}患者禁用，对本品过敏者禁用"
                if drug.contraindications
                else f"{name}：对本品或其成分过敏者禁用"
            )
        if not contra:
            contra.append(
                pick(
                    rng,
                    [
                        f"{d.name}不宜自行用药，需医生评估后开具处方，对所用药物过敏者禁用",
                        "在明确诊断前不要自行服用止痛药或抗菌药物，以免掩盖病情或引起不良反应",
                    ],
                )
            )
        if any(r.drug == "对乙酰氨基酚" for r in recs) and any(r.drug == "布洛芬" for r in recs):
            interactions.append("对乙酰氨基酚与布洛芬不要同时或交替自行叠加使用，选择其中一种即可")
        hist_text = f"，有{join_zh(history)}" if history else ""
        drugs_text = f"，正在服用{join_zh(current)}" if current else ""
        if recs:
            core = pick(
                rng,
                [
                    f"可在医生或药师指导下使用{join_zh([r.drug for r in recs])}缓解症状",
                    f"可考虑{join_zh([r.drug for r in recs])}，需结合个人情况选择",
                ],
            )
        else:
            core = pick(rng, ["目前不建议自行用药，应先到医院明确诊断和评估", "不宜自行购药，需由医生评估后用药"])
        assessment = f"患者{inp['sex']}，{inp['age']}岁{hist_text}{drugs_text}，诊断为{d.name}。{core}。" + pick(
            rng, ["", f"{d.overview}。"]
        )
        advice = pick_some(rng, d.self_care, 1, 3) + pick_some(rng, V.GENERAL_ADVICE, 0, 1)
        flags = pick_some(rng, red_flags_for(d, history), 1, 3)
        if recs:
            see_doctor = pick(
                rng,
                [
                    f"如出现{join_zh(flags)}，或用药3天症状无改善，请及时到{d.department}就诊",
                    f"出现{join_zh(flags)}时应立即就医；用药后症状持续不缓解也应到{d.department}复诊",
                ],
            )
        else:
            see_doctor = pick(
                rng,
                [
                    f"请尽快到{d.department}就诊；如出现{join_zh(flags)}，应立即就医",
                    f"建议先到{d.department}明确诊断，出现{join_zh(flags)}时立即去急诊",
                ],
            )
        return DrugOutput(
            assessment=assessment,
            recommendations=recs,
            not_recommended=avoided,
            contraindications=contra,
            interactions=interactions,
            non_drug_advice=advice,
            when_to_see_doctor=see_doctor,
            disclaimer=pick(rng, V.DISCLAIMERS),
        ).model_dump()

    def checks(self, inp: dict[str, Any], out: Any) -> Iterator[CheckFailure]:
        o: DrugOutput = out
        text = o.model_dump_json()
        if FOLLOW_ORDERS not in text:
            yield CheckFailure("follow_orders", "the advice never tells the patient to follow the doctor (遵医嘱)")
        for r in o.recommendations:
            drug = V.DRUG_BY_NAME.get(r.drug)
            if drug is None:
                continue
            blocked = blocking(drug, inp["history"])
            if blocked:
                yield CheckFailure("contraindicated", f"{r.drug} recommended despite {join_zh(blocked)}")
            if drug.category == "处方药" and not (FOLLOW_ORDERS in r.usage or "医生" in r.usage):
                yield CheckFailure("prescription", f"{r.drug} is a prescription drug: usage must name the doctor")
            for c in inp["current_drugs"]:
                cls = V.CURRENT_DRUGS.get(c)
                if cls in drug.interactions and c not in " ".join(o.interactions) + r.usage:
                    yield CheckFailure("interactions", f"{r.drug} interacts with {c}, not mentioned")
