"""``check_rag``: judge how relevant each retrieved passage is to the user's question and whether they suffice.

Passages are written from the disease and drug vocabularies: one per (disease, aspect), aspects being
symptoms, tests, treatment, prevention and warning signs. A query is about one disease and aspect; the
retrieved set mixes passages on that exact aspect (relevant), on the same disease or a differential
(partly relevant) and on unrelated diseases (irrelevant), and sometimes holds no relevant passage at all.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, Field

from medtune_core.synthesis import vocab as V
from medtune_core.synthesis.base import Agent, CheckFailure, join_zh, pick, pick_some, register_agent

Relevance = Literal["相关", "部分相关", "不相关"]
ASPECTS = ["症状", "检查", "治疗", "预防", "危险信号"]
ASPECT_WORDS = {
    "症状": "临床表现",
    "检查": "检查方法",
    "治疗": "治疗和用药",
    "预防": "预防措施",
    "危险信号": "就医指征",
}
SOURCES = ["基层常见疾病诊疗指南", "医院健康科普", "医学百科", "临床诊疗规范", "患者教育手册"]


def passage_text(d: V.Disease, aspect: str, variant: int) -> str:
    """A retrieval passage about one aspect of a disease (``variant`` picks the wording)."""
    if aspect == "症状":
        bodies = [
            f"{d.name}的典型症状包括{join_zh(d.key_symptoms)}。{join_zh(d.features, '；')}。",
            f"{d.overview}。临床上常表现为{join_zh(d.key_symptoms)}，{d.features[0]}。",
        ]
    elif aspect == "检查":
        bodies = [
            f"怀疑{d.name}时，常用检查有{join_zh(d.tests)}。需与{join_zh([x.name for x in d.differentials])}相鉴别。",
            f"{d.name}的诊断依靠病史、体格检查和{join_zh(d.tests)}。{d.differentials[0].reason}。",
        ]
    elif aspect == "治疗":
        meds = f"常用药物有{join_zh(d.drugs)}，需按说明书或遵医嘱使用" if d.drugs else "不建议自行用药，需由医生评估"
        bodies = [
            f"{d.name}的治疗：{join_zh(d.self_care, '；')}。{meds}。",
            f"{d.overview}。处理上应{d.self_care[0]}，{meds}。",
        ]
    elif aspect == "预防":
        prevention = d.prevention or d.self_care
        bodies = [
            f"预防{d.name}的要点：{join_zh(prevention, '；')}。",
            f"{d.name}的日常预防包括{join_zh(prevention)}，有相关症状者应及早到{d.department}就诊。",
        ]
    else:
        bodies = [
            f"{d.name}患者出现以下情况应立即就医：{join_zh(d.red_flags, '；')}。",
            f"{d.name}的警示征象包括{join_zh(d.red_flags)}，出现时不要拖延，应到{d.department}或急诊就诊。",
        ]
    return bodies[variant % len(bodies)]


def aspect_items(d: V.Disease, aspect: str) -> list[str]:
    """What a passage on ``aspect`` of ``d`` lists (every one of them appears in its text)."""
    return {
        "症状": d.key_symptoms,
        "检查": d.tests,
        "治疗": [d.self_care[0]],
        "预防": d.prevention or d.self_care,
        "危险信号": d.red_flags,
    }[aspect]


def detail(rng: random.Random, d: V.Disease, aspect: str, text: str) -> str:
    """One or two items the passage itself lists, quoted in a judgement's reason."""
    items = [i for i in aspect_items(d, aspect) if i in text] or [d.name]
    return join_zh(pick_some(rng, items, 1, 2))


def query_forms(d: V.Disease, aspect: str) -> list[str]:
    sym = join_zh(d.key_symptoms[:2])
    forms = {
        "症状": [f"{d.name}一般有哪些症状？", f"{sym}是不是{d.name}的表现？", f"怎么判断自己是不是得了{d.name}？"],
        "检查": [f"怀疑{d.name}需要做哪些检查？", f"去医院看{d.name}要查什么？", f"{d.name}怎么确诊？"],
        "治疗": [f"{d.name}怎么治疗？", f"得了{d.name}可以吃什么药？", f"{d.name}在家怎么处理？"],
        "预防": [f"怎么预防{d.name}？", f"{d.name}好了以后怎么避免复发？", f"平时注意什么可以少得{d.name}？"],
        "危险信号": [
            f"{d.name}出现什么情况要马上去医院？",
            f"{d.name}什么时候需要看急诊？",
            f"{d.name}有哪些危险信号？",
        ],
    }
    return forms[aspect]


def query_text(rng: random.Random, d: V.Disease, aspect: str) -> str:
    return pick(rng, V.QUESTION_OPENERS) + pick(rng, query_forms(d, aspect))


_PASSAGES: dict[str, tuple[V.Disease, str]] = {}
_QUERIES: dict[str, tuple[V.Disease, str]] = {}


def identify(text: str, *, query: bool = False) -> tuple[V.Disease, str] | None:
    """The (disease, aspect) a vocabulary passage or query was written from, or None for foreign text."""
    if not _PASSAGES:
        for d in V.DISEASES:
            for a in ASPECTS:
                for v in range(2):
                    _PASSAGES.setdefault(passage_text(d, a, v), (d, a))
                for form in query_forms(d, a):
                    _QUERIES.setdefault(form, (d, a))
    if not query:
        return _PASSAGES.get(text)
    for opener in sorted(V.QUESTION_OPENERS, key=len, reverse=True):
        if text.startswith(opener) and text[len(opener) :] in _QUERIES:
            return _QUERIES[text[len(opener) :]]
    return None


class Passage(BaseModel):
    id: str
    source: str
    text: str = Field(min_length=10)


class CheckRagInput(BaseModel):
    query: str = Field(min_length=4)
    passages: list[Passage] = Field(min_length=1)


class PassageJudgement(BaseModel):
    id: str
    relevance: Relevance
    score: int = Field(ge=0, le=2, description="2 相关, 1 部分相关, 0 不相关")
    reason: str = Field(min_length=6)


class CheckRagOutput(BaseModel):
    judgements: list[PassageJudgement] = Field(min_length=1)
    relevant_ids: list[str]
    sufficient: bool = Field(description="相关段落是否足以回答问题")
    missing_information: str
    summary: str = Field(min_length=6)


RELEVANCE_SCORE = {"相关": 2, "部分相关": 1, "不相关": 0}


@register_agent
class CheckRagAgent(Agent):
    name = "check_rag"
    title = "检索结果相关性判断"
    recommended_sizes = (500, 2000)
    input_model = CheckRagInput
    output_model = CheckRagOutput
    system_prompt = (
        "你是智能健康助手的检索质检模块。给定用户问题和检索到的若干医学知识段落，请逐条判断每个段落与问题的相关性"
        "（相关=2分、部分相关=1分、不相关=0分）并说明理由，列出相关段落编号，判断这些段落是否足以回答问题，"
        "不足时说明缺少什么信息，最后用一句话总结。以JSON格式输出。"
    )

    def sample_input(self, rng: random.Random) -> dict[str, Any]:
        d = pick(rng, V.DISEASES)
        aspect = pick(rng, ASPECTS)
        n = rng.randint(3, 5)
        n_rel = pick(rng, [0, 1, 1, 1, 2, 2])
        pool: list[tuple[V.Disease, str]] = [(d, aspect)] * n_rel
        diff_names = [x.name for x in d.differentials if x.name in V.DISEASE_BY_NAME]
        while len(pool) < n:
            roll = rng.random()
            if roll < 0.35:
                pool.append((d, pick(rng, [a for a in ASPECTS if a != aspect])))
            elif roll < 0.55 and diff_names:
                pool.append((V.DISEASE_BY_NAME[pick(rng, diff_names)], aspect))
            else:
                other = pick(rng, [x for x in V.DISEASES if x.name != d.name and x.name not in diff_names])
                pool.append((other, pick(rng, ASPECTS)))
        rng.shuffle(pool)
        passages, used = [], set()
        for i, (pd, pa) in enumerate(pool):
            variant = rng.randrange(2)
            text = passage_text(pd, pa, variant)
            if text in used:  # the same passage twice: use the other wording
                text = passage_text(pd, pa, variant + 1)
            used.add(text)
            passages.append(Passage(id=f"P{i + 1}", source=pick(rng, SOURCES), text=text))
        return CheckRagInput(query=query_text(rng, d, aspect), passages=passages).model_dump()

    def template_output(self, inp: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        asked = identify(inp["query"], query=True)
        pool = [identify(p["text"]) for p in inp["passages"]]
        if asked is None or None in pool:
            raise ValueError("check_rag template outputs need a query and passages from the vocabularies")
        d, aspect = asked
        judgements = []
        asked_words = ASPECT_WORDS[aspect]
        for p, (pd, pa) in zip(inp["passages"], pool, strict=True):  # type: ignore[misc]
            said, words = detail(rng, pd, pa, p["text"]), ASPECT_WORDS[pa]
            if (pd, pa) == (d, aspect):
                rel = "相关"
                forms = [
                    f"段落直接介绍了{d.name}的{words}，正是问题所问",
                    f"内容与问题一致，涵盖{d.name}的{words}（如{said}）",
                    f"段落列出了{said}等{d.name}的{words}，可直接用于回答",
                    f"讲的正是{d.name}的{words}，提到{said}，切题",
                ]
            elif pd.name == d.name:
                rel = "部分相关"
                forms = [
                    f"同样讲{d.name}，但内容是{words}，而问题问的是{asked_words}",
                    f"涉及{d.name}的{words}（{said}），只能作为背景，不能直接回答问题",
                    f"虽是{d.name}，但讲的是{said}等{words}，没有回答{asked_words}",
                ]
            elif any(pd.name == x.name for x in d.differentials) and pa == aspect:
                rel = "部分相关"
                forms = [
                    f"讲的是需与{d.name}鉴别的{pd.name}的{words}，可作鉴别参考，但不是所问疾病",
                    f"{pd.name}是{d.name}的鉴别诊断，段落的{words}（{said}）可供对照，不能直接作答",
                ]
            else:
                rel = "不相关"
                forms = [
                    f"段落讲的是{pd.name}，与问题中的{d.name}无关",
                    f"内容为{pd.name}的{words}，与所问问题无关",
                    f"{pd.name}的{words}（{said}）与{d.name}的问题无关",
                    f"讲{pd.name}，和{d.name}的{asked_words}没有关系",
                ]
            judgements.append(
                PassageJudgement(id=p["id"], relevance=rel, score=RELEVANCE_SCORE[rel], reason=pick(rng, forms))
            )
        relevant = [j.id for j in judgements if j.relevance == "相关"]
        sufficient = bool(relevant)
        if sufficient:
            missing = pick(
                rng,
                [
                    "",
                    "",
                    f"可补充患者个体情况（年龄、基础疾病）以便给出针对性的{asked_words}",
                    f"如能结合患者的具体情况，{asked_words}会更有针对性",
                ],
            )
            summary = pick(
                rng,
                [
                    f"{join_zh(relevant)}可直接回答关于{d.name}{asked_words}的问题，其余段落可忽略。",
                    f"检索结果中{join_zh(relevant)}与问题相关，信息足以作答。",
                    f"回答{d.name}的{asked_words}以{join_zh(relevant)}为准，其他段落参考价值有限。",
                    f"共{len(judgements)}段，其中{join_zh(relevant)}切题，足以回答。",
                ],
            )
        else:
            missing = pick(
                rng,
                [
                    f"缺少关于{d.name}{asked_words}的段落，需要重新检索",
                    f"没有讲{d.name}{asked_words}的内容，应补充检索",
                    f"需要{d.name}的{asked_words}相关资料",
                ],
            )
            summary = pick(
                rng,
                [
                    f"没有段落直接回答{d.name}的{asked_words}问题，建议重新检索。",
                    f"检索结果不足：未找到{d.name}{asked_words}的相关内容。",
                    f"{len(judgements)}段中没有一段回答{d.name}的{asked_words}，不足以作答。",
                ],
            )
        return CheckRagOutput(
            judgements=judgements,
            relevant_ids=relevant,
            sufficient=sufficient,
            missing_information=missing,
            summary=summary,
        ).model_dump()

    def checks(self, inp: dict[str, Any], out: Any) -> Iterator[CheckFailure]:
        o: CheckRagOutput = out
        ids = [p["id"] for p in inp["passages"]]
        if [j.id for j in o.judgements] != ids:
            yield CheckFailure("coverage", "judgements must cover every passage once, in order")
        for j in o.judgements:
            if j.score != RELEVANCE_SCORE[j.relevance]:
                yield CheckFailure("score", f"{j.id}: score {j.score} does not match relevance {j.relevance}")
        if sorted(o.relevant_ids) != sorted(j.id for j in o.judgements if j.relevance == "相关"):
            yield CheckFailure("relevant_ids", "relevant_ids differ from the passages judged relevant")
        if o.sufficient and not o.relevant_ids:
            yield CheckFailure("sufficient", "sufficient without any relevant passage")
        if not o.sufficient and not o.missing_information.strip():
            yield CheckFailure("sufficient", "insufficient results must say what is missing")
