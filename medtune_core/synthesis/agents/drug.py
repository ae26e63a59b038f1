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


AVOID_FORMS = [
    "患者有{h}，{d}禁用或不宜使用",
    "{h}是{d}的禁忌，不应使用",
    "因{h}，{d}不适合该患者",
    "{d}禁用于{h}患者",
]
INTERACTION_FORMS = ["{d}与{c}：{e}", "{d}与正在服用的{c}同用时，{e}", "注意{d}和{c}的相互作用：{e}"]
CAREFUL_FORMS = ["患者有{h}，使用前请先咨询医生", "有{h}，需在医生评估后使用", "因有{h}，用药前应咨询医生或药师"]
ELDERLY_FORMS = ["老年人宜从小剂量开始", "年龄较大，注意观察不良反应", "老年患者用药期间应加强观察"]
RX_FORMS = [
    f"处方药，须由医生开具，{FOLLOW_ORDERS}",
    f"处方药，需医生处方后使用，{FOLLOW_ORDERS}",
    f"须凭医生处方使用，{FOLLOW_ORDERS}",
]
CONTRA_FORMS = ["{d}：{h}患者禁用，对本品过敏者禁用", "{h}者及对{d}过敏者禁用{d}", "{d}禁用于{h}及过敏体质者"]
SEE_DOCTOR_WITH_DRUGS = [
    "如出现{f}，或用药{n}天症状无改善，请及时到{dep}就诊",
    "出现{f}时应立即就医；用药后症状持续不缓解也应到{dep}复诊",
    "用药{n}天仍不见好转，或出现{f}，请到{dep}就诊",
    "一旦出现{f}，不要继续自行用药，尽快到{dep}或急诊就诊",
]
SEE_DOCTOR_WITHOUT = [
    "请尽快到{dep}就诊；如出现{f}，应立即就医",
    "建议先到{dep}明确诊断，出现{f}时立即去急诊",
    "需要到{dep}面诊评估；若出现{f}，请立即急诊就医",
]


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
    patient_fields = ("recommendations", "non_drug_advice", "when_to_see_doctor")
    system_prompt = (
        "你是智能健康助手的用药建议模块，具备临床药师的专业知识。请根据患者的疾病或症状、年龄、性别、既往史、"
        "过敏史、妊娠哺乳状态和正在服用的药物，给出用药建议：推荐药物的类别（非处方药/处方药）、用途、常用成人剂量和注意事项；"
        "列出禁忌证，指出该患者不宜使用的药物及原因，提示药物相互作用，给出非药物措施和需要就医的情况。"
        "处方药必须由医生开具，所有建议须提醒患者遵医嘱并阅读说明书。以JSON格式输出。"
    )

    def sample_input(self, rng: random.Random) -> dict[str, Any]:
        vocab = V.current()
        with_drugs = [d for d in V.DISEASES if d.drugs]
        d = pick(rng, with_drugs) if rng.random() < 0.88 else pick(rng, [d for d in V.DISEASES if not d.drugs])
        patient = sample_patient(rng, d)
        sex, age = patient["sex"], patient["age"]
        states = vocab.states_for(sex, age)  # pregnancy / breast-feeding only at the ages they are plausible
        if states and rng.random() < 0.2:
            patient["history"] = [*patient["history"], pick(rng, states)]
        if rng.random() < 0.35 and d.drugs:  # make contraindications frequent enough to learn from
            drug = V.DRUG_BY_NAME[pick(rng, d.drugs)]
            possible = set(vocab.histories_for(sex, age)) | set(states)
            fits = [c for c in drug.contraindications if c in possible]
            chosen = pick(rng, fits) if fits else None
            if chosen and chosen not in patient["history"]:
                patient["history"] = [*patient["history"], chosen]
        held = [h for h in patient["history"] if h in states]
        if len(held) > 1:  # one state at a time
            patient["history"] = [h for h in patient["history"] if h not in held[1:]]
        symptoms = sample_symptoms(rng, d, sex)[:3]
        asks = [
            f"医生说是{d.name}，我该吃什么药？",
            f"得了{d.name}，家里能备点什么药？",
            f"{d.name}吃什么药好得快，有什么要注意的？",
            f"被诊断为{d.name}，{join_zh(symptoms[:2])}很难受，能用什么药缓解？",
            f"{join_zh(symptoms[:2])}，医生考虑{d.name}，用药上要注意什么？",
            f"我这个{d.name}需要吃药吗？吃什么比较安全？",
        ]
        if patient["history"]:
            asks.append(f"我有{join_zh(patient['history'])}，得了{d.name}能吃什么药？")
        if patient["current_drugs"]:
            asks.append(f"平时在吃{join_zh(patient['current_drugs'])}，现在{d.name}还能用什么药？")
        return DrugInput(
            **patient,
            condition=d.name,
            symptoms=symptoms,
            question=pick(rng, V.QUESTION_OPENERS) + pick(rng, asks),
        ).model_dump()

    def template_output(self, inp: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        vocab = V.current()
        d = V.DISEASE_BY_NAME[inp["condition"]]
        sex, age, history, current = inp["sex"], inp["age"], inp["history"], inp["current_drugs"]
        current_classes = {c: V.CURRENT_DRUGS[c] for c in current if c in V.CURRENT_DRUGS}
        recs: list[DrugRecommendation] = []
        avoided: list[AvoidedDrug] = []
        contra: list[str] = []
        interactions: list[str] = []
        usable = []
        for name in d.drugs:
            drug = V.DRUG_BY_NAME[name]
            if drug.sex not in (None, sex):  # a drug for the other sex is not an option at all
                continue
            blocked = blocking(drug, history)
            if blocked:
                avoided.append(AvoidedDrug(drug=name, reason=pick(rng, AVOID_FORMS).format(h=join_zh(blocked), d=name)))
                continue
            if not drug.min_age <= age <= drug.max_age:
                avoided.append(
                    AvoidedDrug(drug=name, reason=f"{name}的常用剂量适用于{drug.min_age}岁以上，不适合该患者")
                )
                continue
            hits = [(c, drug.interactions[k]) for c, k in current_classes.items() if k in drug.interactions]
            if any("应避免" in effect for _, effect in hits):
                c, effect = next((c, e) for c, e in hits if "应避免" in e)
                avoided.append(AvoidedDrug(drug=name, reason=f"正在服用{c}：{effect}"))
                continue
            usable.append((drug, hits))
        if len(usable) > 1:  # one or more of the suitable drugs, those treating the patient's symptoms first
            usable.sort(key=lambda u: -sum(i in inp["symptoms"] or i in d.name for i in u[0].indications))
            usable = usable[: rng.randint(1, len(usable))]
        for drug, hits in usable:
            name = drug.name
            for c, effect in hits:
                interactions.append(pick(rng, INTERACTION_FORMS).format(d=name, c=c, e=effect))
            cautions = vocab.only_fitting(
                pick_some(rng, drug.cautions, 1, len(drug.cautions)) + drug.notes[:1], sex, history
            )
            rng.shuffle(cautions)
            careful = [h for h in history if h in drug.caution_histories]
            if careful:
                cautions.insert(0, pick(rng, CAREFUL_FORMS).format(h=join_zh(careful)))
            if age >= 65 and not drug.topical:
                cautions.append(pick(rng, ELDERLY_FORMS))
            if not cautions:
                cautions.append(pick(rng, ["按说明书使用，不要超量", "用药期间如有不适及时停药并就医"]))
            usage = drug.dosing
            if drug.category == "处方药":
                usage = f"{usage}（{pick(rng, RX_FORMS)}）"
            else:
                usage += pick(rng, ["", "；具体以药品说明书为准", "；请按说明书或药师指导使用"])
            matched = [i for i in drug.indications if i in inp["symptoms"] or i in d.name][:2]
            purpose = (
                pick(rng, [f"缓解{join_zh(matched)}", join_zh(matched)])
                if matched
                else (f"{drug.drug_class}，用于{join_zh(drug.indications[:2])}")
            )
            recs.append(
                DrugRecommendation(drug=name, category=drug.category, purpose=purpose, usage=usage, cautions=cautions)
            )
            contra.append(
                pick(rng, CONTRA_FORMS).format(d=name, h=join_zh(drug.contraindications))
                if drug.contraindications
                else pick(rng, [f"{name}：对本品或其成分过敏者禁用", f"对{name}或其辅料过敏者禁用"])
            )
        if not contra:
            contra.append(
                pick(
                    rng,
                    [
                        f"{d.name}不宜自行用药，需医生评估后开具处方，对所用药物过敏者禁用",
                        "在明确诊断前不要自行服用止痛药或抗菌药物，以免掩盖病情或引起不良反应",
                        f"{d.name}的用药需由医生根据检查结果决定，切勿自行使用抗菌药物或激素",
                    ],
                )
            )
        if any(r.drug == "对乙酰氨基酚" for r in recs) and any(r.drug == "布洛芬" for r in recs):
            interactions.append("对乙酰氨基酚与布洛芬不要同时或交替自行叠加使用，选择其中一种即可")
        names = join_zh([r.drug for r in recs])
        hist_text = pick(rng, [f"，有{join_zh(history)}", f"，既往{join_zh(history)}"]) if history else ""
        drugs_text = f"，正在服用{join_zh(current)}" if current else ""
        opening = pick(
            rng,
            [
                f"患者{sex}，{age}岁{hist_text}{drugs_text}，诊断为{d.name}。",
                f"{age}岁{sex}性{hist_text}{drugs_text}，目前考虑{d.name}，主要表现为{join_zh(inp['symptoms'])}。",
                f"根据描述，患者（{sex}，{age}岁）患{d.name}，{join_zh(inp['symptoms'])}明显{hist_text}{drugs_text}。",
                f"{d.name}患者，{sex}，{age}岁，症状以{join_zh(inp['symptoms'][:2])}为主{hist_text}{drugs_text}。",
            ],
        )
        if recs:
            core = pick(
                rng,
                [
                    f"可在医生或药师指导下使用{names}缓解症状",
                    f"可考虑{names}，需结合个人情况选择",
                    f"对症可选{names}，剂量和疗程按说明书或遵医嘱",
                    f"首选{recs[0].drug}对症处理"
                    + (f"，也可考虑{join_zh([r.drug for r in recs[1:]])}" if recs[1:] else ""),
                ],
            )
        else:
            core = pick(
                rng,
                [
                    "目前不建议自行用药，应先到医院明确诊断和评估",
                    "不宜自行购药，需由医生评估后用药",
                    f"{d.name}需要医生面诊后决定治疗方案，暂不建议自行服药",
                ],
            )
        notes = []
        if avoided:
            notes.append(
                pick(
                    rng,
                    [
                        f"因个人情况，{join_zh([a.drug for a in avoided])}不适合使用",
                        f"{join_zh([a.drug for a in avoided])}对该患者不适用",
                    ],
                )
            )
        if age >= 65:
            notes.append(pick(rng, ["老年患者用药宜从小剂量开始并注意不良反应", "高龄患者肝肾功能减退，用药需更谨慎"]))
        assessment = opening + core + "。" + "".join(f"{n}。" for n in notes) + pick(rng, ["", f"{d.overview}。"])
        advice = pick_some(rng, vocab.only_fitting(d.self_care, sex, history), 1, 3) + pick_some(
            rng, V.GENERAL_ADVICE, 0, 2
        )
        rng.shuffle(advice)
        flags = pick_some(rng, red_flags_for(d, history, sex), 1, 3)
        forms = SEE_DOCTOR_WITH_DRUGS if recs else SEE_DOCTOR_WITHOUT
        see_doctor = pick(rng, forms).format(f=join_zh(flags), dep=d.department, n=pick(rng, ["2", "3"]))
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
