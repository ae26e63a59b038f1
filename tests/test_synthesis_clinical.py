"""Clinical consistency of synthesized data: vocabularies as checked data, the rules, template mode within them,
LLM answers rejected by rule, ``medtune audit``, diversity, and nights that do not repeat."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from medtune_core.llm import LLMConfig
from medtune_core.synthesis import (
    RULES,
    DedupConfig,
    agent_names,
    check_facts,
    generate_template_samples,
    get_agent,
    novelty,
)
from medtune_core.synthesis import vocab as V
from medtune_core.synthesis.audit import audit_file
from medtune_core.synthesis.base import Sample
from medtune_core.synthesis.llm_mode import run_llm_mode
from medtune_core.synthesis.nights import index_dir
from medtune_core.synthesis.output import write_agent_file
from medtune_core.synthesis.postprocess import dedup_text, shingles
from medtune_core.synthesis.requests import USER_PREFIX
from medtune_core.synthesis.run import finalize_agent, seed_batch
from medtune_core.synthesis.templates import template_fingerprint
from medtune_core.synthesis.vocab import VocabularyError, load_vocabulary, use_vocabulary
from tests.fakes.openai_server import FakeOpenAIServer, FakeRequest

DRUG = {
    "name": "头孢呋辛酯",
    "category": "处方药",
    "drug_class": "第二代头孢菌素",
    "indications": ["咽痛", "发热"],
    "contraindications": ["青霉素过敏"],
    "cautions": ["服药期间及停药后一周内禁酒"],
    "dosing": "成人一次0.25克，一日2次，餐后服用",
    "min_age": 18,
}
COLD = load_vocabulary().disease_by_name["普通感冒"].model_dump(mode="json")


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ vocabularies


def test_builtin_vocabulary_loads_with_every_reference_resolved() -> None:
    v = load_vocabulary()
    assert len(v.diseases) >= 30 and len(v.drugs) >= 20
    assert not list(v.reference_problems())
    names = set(v.history_by_name)
    assert all(set(d.contraindications) <= names for d in v.drugs)
    assert {s.name for s in v.states} == {"妊娠期", "哺乳期"}
    assert v.history_by_name["前列腺增生"].sex == "男" and v.history_by_name["妊娠期"].max_age <= 50


@pytest.mark.parametrize(
    ("entry", "where", "what"),
    [
        (
            {"drugs": [dict(DRUG, contraindications=["头孢过敏史"])]},
            "drugs[头孢呋辛酯].contraindications",
            "头孢过敏史",
        ),
        ({"drugs": [dict(DRUG, interactions={"抗癫痫": "减弱疗效"})]}, "drugs[头孢呋辛酯].interactions", "抗癫痫"),
        ({"drugs": [dict(DRUG, category="保健品")]}, "drugs[头孢呋辛酯].category", "非处方药"),
        ({"diseases": [dict(COLD, department="全科/发热科")]}, "diseases[普通感冒].department", "发热科"),
        ({"other_conditions": [{"name": "异位妊娠", "sex": "男"}]}, "", ""),  # valid: an override, checked below
    ],
)
def test_a_dangling_reference_is_named_by_file_and_key(tmp_path: Path, entry: dict, where: str, what: str) -> None:
    path = write_yaml(tmp_path / "hospital.yaml", entry)
    if not where:
        assert load_vocabulary([path]).condition_sex["异位妊娠"] == "男"  # a later file overrides by name
        return
    with pytest.raises(VocabularyError) as err:
        load_vocabulary([path])
    message = str(err.value)
    assert re.search(rf"hospital\.yaml:\d+: {re.escape(where)}", message) and what in message  # file:line: entry


def test_disease_pointing_at_a_missing_drug_names_its_file(tmp_path: Path) -> None:
    disease = load_vocabulary().disease_by_name["急性扁桃体炎"].model_dump(mode="json")
    disease["drugs"] = ["头孢呋辛酯"]
    path = write_yaml(tmp_path / "ward.yaml", {"diseases": [disease]})
    with pytest.raises(
        VocabularyError, match=r"ward\.yaml:\d+: diseases\[急性扁桃体炎\]\.drugs: unknown drug '头孢呋辛酯'"
    ):
        load_vocabulary([path])
    formulary = write_yaml(tmp_path / "formulary.yaml", {"drugs": [DRUG]})
    v = load_vocabulary([path, formulary])  # with the formulary the reference resolves
    assert v.disease_by_name["急性扁桃体炎"].drugs == ["头孢呋辛酯"]


def test_a_hospital_formulary_changes_the_samples_and_the_fingerprint(tmp_path: Path) -> None:
    disease = load_vocabulary().disease_by_name["急性扁桃体炎"].model_dump(mode="json")
    disease["drugs"] = ["头孢呋辛酯"]
    folder = tmp_path / "hospital"
    folder.mkdir()
    write_yaml(folder / "drugs.yaml", {"drugs": [DRUG]})
    write_yaml(folder / "diseases.yaml", {"diseases": [disease]})
    before = template_fingerprint("drug")
    with_formulary = template_fingerprint("drug", [folder])
    assert with_formulary != before and template_fingerprint("drug") == before
    result = seed_batch("drug", 3, 0, 300, [folder])
    assert not result.rejects
    recommended = {r["drug"] for s in result.accepted for r in s.output["recommendations"]}
    assert "头孢呋辛酯" in recommended and "阿莫西林" not in {
        r["drug"]
        for s in result.accepted
        if s.input["condition"] == "急性扁桃体炎"
        for r in s.output["recommendations"]
    }
    assert "头孢呋辛酯" not in {
        r["drug"] for s in seed_batch("drug", 3, 0, 300).accepted for r in s.output["recommendations"]
    }
    write_yaml(folder / "drugs.yaml", {"drugs": [dict(DRUG, dosing="成人一次0.5克，一日2次")]})
    assert template_fingerprint("drug", [folder]) != with_formulary  # an edited file regenerates the batches


# ------------------------------------------------------------------------------------------------ template mode


@pytest.fixture(scope="module")
def thousand() -> dict[str, list]:
    return {a: generate_template_samples(a, 1000, seed=0) for a in agent_names()[:5]}


def test_thousand_template_samples_per_agent_break_no_rule_and_are_diverse(thousand: dict[str, list]) -> None:
    for name, samples in thousand.items():
        agent = get_agent(name)
        facts = [agent.clinical_facts(s.input, s.output) for s in samples]
        violations = [(s.index, v) for s, f in zip(samples, facts, strict=True) for v in check_facts(f)]
        assert violations == [], f"{name}: {violations[:5]}"
        share = novelty([s.output for s in samples])
        assert share >= 0.9, f"{name}: only {share:.1%} of 1,000 samples have no earlier near copy"
    # the rules had something to check: patients of both sexes, pregnancies, contraindications, departments
    drug = [agent for agent in (get_agent("drug").clinical_facts(s.input, s.output) for s in thousand["drug"])]
    assert {f.sex for f in drug} == {"男", "女"}
    assert sum("妊娠期" in f.history or "哺乳期" in f.history for f in drug) >= 30
    assert sum(bool(s.output["not_recommended"]) for s in thousand["drug"]) >= 100
    critic = [get_agent("critic").clinical_facts(s.input, s.output) for s in thousand["critic"]]
    assert all(f.age is not None and f.sex for f in critic) and sum(bool(f.history) for f in critic) >= 200
    assert all(s.output["department"] for s in thousand["diagnosis"])


def test_novelty_counts_near_copies_after_stripping_digits() -> None:
    a = {"advice": "体温38.5℃，多饮水，注意休息，如持续高热请及时到发热门诊就诊并完善血常规检查"}
    b = {"advice": a["advice"].replace("38.5", "39.2")}  # differs only in digits
    c = {"advice": "腰痛向下肢放射，避免久坐和弯腰搬重物，睡硬板床，疼痛加重或出现大小便异常时立即就医"}
    assert novelty([a, b, c]) == pytest.approx(2 / 3)
    assert novelty([a, c]) == 1.0


# ------------------------------------------------------------------------------------------------ the rules


def first(agent: str, seed: int, cond) -> tuple[dict, dict]:
    s = next(x for x in generate_template_samples(agent, 300, seed) if cond(x.input, x.output))
    return copy.deepcopy(s.input), copy.deepcopy(s.output)


def fired(agent: str, inp: dict, out: dict) -> set[str]:
    _, failures = get_agent(agent).validate(inp, out)
    return {f.check.removeprefix("clinical:") for f in failures if f.check.startswith("clinical:")}


def test_each_rule_fires_with_its_name(tmp_path: Path) -> None:
    seen: set[str] = set()

    def expect(rule: str, agent: str, inp: dict, out: dict) -> None:
        got = fired(agent, inp, out)
        assert rule in got, f"{rule}: got {got}"
        seen.add(rule)

    inp, out = first("diagnosis", 1, lambda i, o: i["sex"] == "女" and not i["history"])
    assert fired("diagnosis", inp, out) == set()  # the untouched sample is clean
    expect("sex_specific_history", "diagnosis", dict(inp, history=["前列腺增生"]), out)
    male, mout = first("diagnosis", 2, lambda i, o: i["sex"] == "男" and i["age"] < 40 and not i["history"])
    expect("history_age", "diagnosis", dict(male, history=["前列腺增生"]), mout)
    expect("sex_specific_symptom", "diagnosis", dict(male, symptoms=[*male["symptoms"], "痛经"]), mout)
    expect("current_drug_indication", "diagnosis", dict(male, current_drugs=["氨氯地平"]), mout)  # no 高血压
    diff = [*mout["differential_diagnosis"], {"disease": "异位妊娠", "reason": "育龄女性有停经史，需查妊娠试验"}]
    expect("sex_specific_condition", "diagnosis", male, dict(mout, differential_diagnosis=diff))
    expect("sex_specific_advice", "diagnosis", male, dict(mout, red_flags=[*mout["red_flags"], "月经量持续增多"]))
    expect("pregnancy_advice", "diagnosis", inp, dict(out, red_flags=[*out["red_flags"], "孕妇出现尿路感染症状"]))
    other = "口腔科" if "口腔科" not in out["department"] else "眼科"
    expect("department_condition", "diagnosis", inp, dict(out, department=other))
    wrong = next(d.name for d in V.DISEASES if not set(d.key_symptoms) & set(inp["symptoms"]) and d.sex is None)
    expect("symptom_condition", "diagnosis", inp, dict(out, preliminary_diagnosis=wrong))

    old, oout = first("drug", 3, lambda i, o: i["sex"] == "女" and i["age"] > 55 and o["recommendations"])
    expect("pregnancy_age", "drug", dict(old, history=["妊娠期"]), oout)
    child, cout = first("drug", 4, lambda i, o: any(r["drug"] == "布洛芬" for r in o["recommendations"]))
    expect("drug_age", "drug", dict(child, age=9), cout)
    expect("contraindicated_drug", "drug", dict(child, history=[*child["history"], "消化性溃疡病史"]), cout)

    # a drug for one sex only, from a hospital's formulary, recommended to a woman
    tamsulosin = dict(DRUG, name="坦索罗辛缓释胶囊", drug_class="α1受体阻滞剂", indications=["排尿困难"], sex="男")
    formulary = write_yaml(tmp_path / "urology.yaml", {"drugs": [tamsulosin]})
    woman, wout = first("drug", 6, lambda i, o: i["sex"] == "女" and o["recommendations"])
    rec = dict(
        wout["recommendations"][0], drug="坦索罗辛缓释胶囊", category="处方药", usage="一次0.2毫克，一日1次，遵医嘱"
    )
    with use_vocabulary([formulary]):
        expect("sex_specific_drug", "drug", woman, dict(wout, recommendations=[rec]))
    assert "sex_specific_drug" not in fired("drug", woman, dict(wout, recommendations=[rec]))  # unknown drug

    q, qout = first("critic", 5, lambda i, o: "，女，" in i["question"])
    assert fired("critic", q, qout) == set()
    crafted = dict(q, question=q["question"].replace("，女，", "，女，有前列腺增生，", 1))
    assert "sex_specific_history" in fired("critic", crafted, qout)
    assert seen == set(RULES), f"rules without a test: {set(RULES) - seen}"


# ------------------------------------------------------------------------------------------------ LLM mode


def model_like_diagnosis(req: FakeRequest) -> str:
    """A model's diagnosis, written from the question alone (not our templates): the vocabulary's disease that best
    matches the symptoms, its differentials, tests and red flags, and a department that does not treat it."""
    asked = [m["content"] for m in req.messages if m["role"] == "user" and m["content"].startswith(USER_PREFIX)]
    inp = json.loads(asked[-1][len(USER_PREFIX) :])
    v = V.current()
    fits = [d for d in v.diseases if d.sex in (None, inp["sex"])]
    d = max(fits, key=lambda d: len(set(d.key_symptoms) & set(inp["symptoms"])))
    diffs = [x for x in d.differentials if v.condition_sex.get(x.name) in (None, inp["sex"])][:2]
    return json.dumps(
        {
            "preliminary_diagnosis": d.name,
            "confidence": "中",
            "reasoning": f"患者{inp['age']}岁，主要表现为{'、'.join(inp['symptoms'])}，结合病程和体征，考虑{d.name}。",
            "differential_diagnosis": [{"disease": x.name, "reason": x.reason} for x in diffs],
            "recommended_tests": d.tests[:1],
            "red_flags": [f for f in d.red_flags if v.fits(f, inp["sex"], inp["history"])][:2] or ["症状明显加重"],
            "urgency": "尽快就诊",
            "department": "眼科" if "眼科" not in d.departments else "口腔科",
            "advice": ["注意休息，多饮水"],
            "disclaimer": "以上分析仅供参考，请及时到医院由医生面诊。",
        },
        ensure_ascii=False,
    )


def test_an_llm_answer_that_breaks_a_rule_is_rejected_with_the_rule(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=model_like_diagnosis) as server:
        config = LLMConfig(
            model="fake-model",
            base_url=server.base_url,
            api_key="test-key",
            concurrency=4,
            timeout_s=5.0,
            backoff_base_s=0.001,
            backoff_max_s=0.01,
            cache_path=tmp_path / "cache.sqlite",
        )
        run = run_llm_mode(tmp_path / "out", config, ["diagnosis"], 4, seed=1, batch_size=4)
    (report,) = run.reports
    assert report.accepted == 0 and report.reasons == {"quality:clinical:department_condition": 4}
    rows = [json.loads(x) for x in Path(report.path).read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 4 and all("department_condition" in r["problem"] for r in rows)


# ------------------------------------------------------------------------------------------------ audit


def test_audit_prints_violations_by_rule_and_fails(tmp_path: Path) -> None:
    samples = generate_template_samples("drug", 6, seed=9)
    clean = write_agent_file(tmp_path, "drug", samples, [], output_format="conversations").path  # ShareGPT rows
    alpaca = [{"instruction": get_agent("drug").system_prompt, "input": s.input, "output": s.output} for s in samples]
    for row in alpaca[:2]:
        row["input"] = dict(row["input"], sex="女", age=70, history=["妊娠期"])
    alpaca[2]["input"] = dict(alpaca[2]["input"], sex="女", history=["前列腺增生"])
    bad = tmp_path / "exported.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in alpaca] + ["{not json"]
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")

    report = audit_file(bad)
    assert report.rows == 7 and report.checked == 6 and report.violating_rows == 3
    assert report.by_rule["pregnancy_age"] == 2 and report.by_rule["sex_specific_history"] == 1
    assert report.unreadable == [f"{bad}:7: invalid JSON (Expecting property name enclosed in double quotes, column 2)"]

    runner = CliRunner()
    result = runner.invoke(app, ["audit", str(bad)])
    assert result.exit_code == 1
    assert "pregnancy_age: 2" in result.output and "sex_specific_history: 1" in result.output
    assert "line 1: 妊娠期 at age 70" in result.output
    ok = runner.invoke(app, ["audit", clean, "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["checked"] == 6 and json.loads(ok.output)["violations"] == {}


# ------------------------------------------------------------------------------------------------ nights


def night(root: Path, date: int, n: int, seed: int | None = None) -> tuple[object, list]:
    batches = [seed_batch("drug", seed or date, 0, n)]
    _, report = finalize_agent(root / str(date), "drug", batches, dedup=DedupConfig(), nights=True)
    written = (
        [json.loads(x) for x in Path(report.path).read_text(encoding="utf-8").splitlines()] if report.accepted else []
    )
    return report, written


def near_pairs(a: list[dict], b: list[dict], threshold: float = 0.9) -> int:
    """Pairs (one row of ``a``, one of ``b``) whose exact shingle Jaccard reaches ``threshold``."""

    def sets(rows: list[dict]) -> list[set[bytes]]:
        return [set(shingles(dedup_text(Sample("drug", 0, r["input"], r["output"])))) for r in rows]

    left, right = sets(a), sets(b)
    return sum(len(x & y) / len(x | y) >= threshold for x in left for y in right)


def test_consecutive_dated_runs_hold_no_near_copy_of_an_earlier_night(tmp_path: Path) -> None:
    root = tmp_path / "nightly"
    first_report, first_rows = night(root, 20260314, 60)
    second_report, second_rows = night(root, 20260315, 60)
    assert first_report.accepted == 60
    assert near_pairs(second_rows, first_rows) == 0
    assert (index_dir(root / "20260315", "drug", "seed") / "20260315.npz").is_file()
    # a night that repeats an earlier one (the same random seed) drops every copy and says so
    third_report, third_rows = night(root, 20260316, 80, seed=20260314)
    dropped = third_report.reasons.get("duplicate:previous_night", 0)
    assert dropped >= 60 and third_report.accepted == 80 - dropped
    assert near_pairs(third_rows, first_rows) == 0 and near_pairs(third_rows, second_rows) == 0
    rejects = [
        json.loads(x) for x in (root / "20260316" / "drug_seed.jsonl.rejects.jsonl").read_text("utf-8").splitlines()
    ]
    assert sum("near copy of 20260314/" in r["problem"] for r in rejects) >= 60
    # re-running a night (a retry) compares only with earlier nights, not with itself
    again, _ = night(root, 20260315, 60)
    assert again.accepted == second_report.accepted


def test_a_nightly_flow_run_drops_what_an_earlier_night_wrote_and_reports_it(prefect_harness, tmp_path: Path) -> None:
    from flows.data_synthesis import TIMEZONE, DataSynthesisParams, data_synthesis, seed_for_date

    root = tmp_path / "nightly"
    tonight = seed_for_date(dt.datetime.now(ZoneInfo(TIMEZONE)).date())
    # an earlier night that happened to write tonight's first four samples
    finalize_agent(root / "19990101", "drug", [seed_batch("drug", tonight, 0, 4)], dedup=DedupConfig(), nights=True)
    out = data_synthesis(DataSynthesisParams(agents=["drug"], num_samples=12, seed=None, output_dir=root))
    summary = json.loads(Path(out["summary"]).read_text(encoding="utf-8"))
    (drug,) = summary["agents"]
    assert drug["reasons"] == {"duplicate:previous_night": 4} and drug["accepted"] == 8
    assert drug["novelty"] == 1.0 and summary["params"]["mode"] == "template"
    assert (index_dir(Path(out["summary"]).parent, "drug", "seed") / f"{tonight}.npz").is_file()


def test_the_flow_takes_a_hospitals_vocabulary_and_checks_it_first(prefect_harness, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from flows.data_synthesis import DataSynthesisParams, data_synthesis

    bad = write_yaml(tmp_path / "bad.yaml", {"drugs": [dict(DRUG, contraindications=["头孢过敏史"])]})
    with pytest.raises(ValidationError, match=r"bad\.yaml:\d+: drugs\[头孢呋辛酯\]\.contraindications"):
        DataSynthesisParams(vocabulary=[bad], output_dir=tmp_path)
    ours = "本院提示：以上建议仅供参考，具体用药请遵医嘱。"
    house = write_yaml(tmp_path / "house.yaml", {"disclaimers": [ours]})
    params = DataSynthesisParams(agents=["drug"], num_samples=6, mode="seed", vocabulary=[house], output_dir=tmp_path)
    assert params.mode == "template"  # the original generator's name for template mode still works
    out = data_synthesis(params)
    rows = [json.loads(x) for x in Path(out["drug.seed"]).read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 6 and {r["output"]["disclaimer"] for r in rows} == {ours}
