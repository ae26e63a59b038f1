"""LLM mode of the synthesis core against the local OpenAI-protocol server (real ``openai`` SDK)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from medtune_core.dataio import DatasetReader, Manifest
from medtune_core.llm import LLMConfig
from medtune_core.synthesis import get_agent
from medtune_core.synthesis.llm_mode import run_llm_mode
from tests.fakes.openai_server import FakeOpenAIServer, ModelLike

PRICES = {"fake-model": {"input": 1000.0, "output": 2000.0, "cached_input": 1000.0, "currency": "USD"}}

#: Answers a model might give, written for these tests (not produced by the agents' templates): objects of the agents'
#: answer schemas. Most pass the agents' checks for most inputs; the last critic answer names a band its score is
#: not in, and the drug answer recommending paracetamol is contraindicated for some patients (borderline answers).
ANSWERS: dict[str, list[dict]] = {
    "CriticOutput": [
        {
            "score": 7,
            "band": "良好",
            "strengths": ["给出了可能的诊断并解释了原因", "提醒了需要就医的情况"],
            "issues": ["没有说明症状持续多久需要复诊"],
            "justification": "回答基本正确、表达清楚，但遗漏了复诊时机，评为7分（良好）。",
            "suggestion": "补充症状持续或加重时的就医时间。",
        },
        {
            "score": 4,
            "band": "较差",
            "strengths": [],
            "issues": ["诊断依据不足", "没有提示危险信号", "用药建议缺少剂量说明"],
            "justification": "回答给出的判断缺少依据且未提示危险信号，评为4分，属于较差。",
            "suggestion": "先询问关键症状，再给出有依据的判断和就医建议。",
        },
        {
            "score": 9,
            "band": "优秀",
            "strengths": ["诊断准确", "解释通俗", "给出了明确的就医指征"],
            "issues": [],
            "justification": "回答准确全面、语言易懂、安全提示到位，评为9分（优秀）。",
            "suggestion": "可以再补充一条日常护理建议。",
        },
        {
            "score": 7,
            "band": "一般",
            "strengths": ["态度友好"],
            "issues": ["内容较笼统"],
            "justification": "整体尚可，但内容不够具体、缺少可以照做的建议，评为7分。",
            "suggestion": "给出更具体的建议。",
        },
    ],
    "DrugOutput": [
        {
            "assessment": "根据描述，症状较轻，目前以对症处理和观察为主，用药前需要医生确认诊断。",
            "recommendations": [],
            "not_recommended": [{"drug": "抗生素", "reason": "没有细菌感染证据时不应自行使用抗生素"}],
            "contraindications": ["对药物成分过敏者禁用相关药物"],
            "interactions": [],
            "non_drug_advice": ["注意休息，多饮水", "清淡饮食，避免辛辣刺激"],
            "when_to_see_doctor": "症状持续三天以上、加重或出现高热、呼吸困难时请及时就医。",
            "disclaimer": "以上建议仅供参考，具体用药请遵医嘱。",
        },
        {
            "assessment": "症状以疼痛和发热为主，可短期使用解热镇痛药缓解，同时观察病情变化。",
            "recommendations": [
                {
                    "drug": "对乙酰氨基酚",
                    "category": "非处方药",
                    "purpose": "退热止痛",
                    "usage": "按说明书剂量口服，两次间隔不少于4小时，一日不超过4次，或遵医嘱。",
                }
            ],
            "not_recommended": [],
            "contraindications": ["严重肝功能不全者禁用对乙酰氨基酚"],
            "interactions": ["避免与其他含对乙酰氨基酚的复方感冒药同服"],
            "non_drug_advice": ["多休息，补充水分"],
            "when_to_see_doctor": "服药后症状不缓解或持续高热超过三天请到医院就诊。",
            "disclaimer": "本建议不能代替医生面诊，请遵医嘱用药。",
        },
    ],
}
ALL_VALID = {"valid": 1.0}
#: Answers that pass the critic's and the drug agent's checks for every input (for tests that count rows).
GOOD_ANSWERS = {"CriticOutput": ANSWERS["CriticOutput"][:3], "DrugOutput": ANSWERS["DrugOutput"][:1]}


def good_model() -> ModelLike:
    """A fake model whose every answer is valid and passes the checks (still not the agents' template output)."""
    return ModelLike(GOOD_ANSWERS, mix=ALL_VALID)


def config(server: FakeOpenAIServer, tmp_path: Path, **kw) -> LLMConfig:
    base = {
        "model": "fake-model",
        "base_url": server.base_url,
        "api_key": "test-key",
        "concurrency": 8,
        "timeout_s": 5.0,
        "backoff_base_s": 0.001,
        "backoff_max_s": 0.01,
        "cache_path": tmp_path / "cache.sqlite",
        "prices": PRICES,
    }
    base.update(kw)
    return LLMConfig(**base)


def reported_cost(server: FakeOpenAIServer, prices: dict = PRICES["fake-model"]) -> float:
    return (
        sum(
            u["prompt_tokens"] * prices["input"] + u["completion_tokens"] * prices["output"]
            for u in server.reported_usage
        )
        / 1e6
    )


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_llm_mode_writes_valid_files_through_faults_and_model_like_answers(tmp_path: Path) -> None:
    """Answers of every kind (valid, fenced, prose around JSON, missing fields, off-schema, truncated) and HTTP
    faults: every planned sample ends accepted or rejected with a reason, the files say exactly that, costs add up."""
    model = ModelLike(ANSWERS)
    with FakeOpenAIServer(responder=model) as server:
        server.add_faults("429:0.01", "500", "disconnect")
        run = run_llm_mode(tmp_path / "out", config(server, tmp_path), ["critic", "drug"], 12, seed=3, batch_size=5)
        assert run.complete and not run.budget_stopped and server.faults_served == ["429", "500", "disconnect"]
        assert server.total > 24 + 3  # the invalid answers were re-asked
        for r in run.reports:
            assert r.requested == 12 and r.accepted + r.rejected == 12 and r.accepted > 0
            assert set(r.reasons) <= {"llm:schema_violation", "llm:invalid_json", "llm:truncated"} | {
                k for k in r.reasons if k.startswith(("quality", "dedup", "exact", "near"))
            }
            assert len(list(DatasetReader(r.path, policy="strict"))) == r.accepted
            assert len(rows(Path(r.path + ".rejects.jsonl"))) == r.rejected
            assert Manifest.load(r.path).extra["complete"] is True
        assert sum(r.cost for r in run.reports) == pytest.approx(reported_cost(server), rel=1e-9)
        assert run.spent == pytest.approx(reported_cost(server), rel=1e-9)
        assert sum(r.input_tokens for r in run.reports) == sum(u["prompt_tokens"] for u in server.reported_usage)
    assert sum(n for style, n in model.styles.items() if not style.startswith("reask")) >= 24


@pytest.mark.parametrize(
    ("style", "reasked"),
    [
        ("valid", False),
        ("fenced", False),
        ("prose", False),
        ("missing_field", True),
        ("off_schema", True),
        ("truncated", True),
    ],
)
def test_each_kind_of_answer_is_read_or_reasked(tmp_path: Path, style: str, reasked: bool) -> None:
    """A fenced answer or one with prose around it is read as is; a missing field, an off-schema object or a cut-off
    answer gets one corrective re-ask, and the fixed answer is accepted."""
    good = {"CriticOutput": ANSWERS["CriticOutput"][:3]}
    with FakeOpenAIServer(responder=ModelLike(good, mix={style: 1.0}, reask_mix=ALL_VALID)) as server:
        run = run_llm_mode(tmp_path, config(server, tmp_path), ["critic"], 3, seed=5)
        assert run.reports[0].accepted == 3 and run.reports[0].rejected == 0
        assert server.total == (6 if reasked else 3)


def test_answers_that_stay_invalid_are_rejected_and_leave_no_data_file(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=ModelLike(ANSWERS, mix={"off_schema": 1.0}, reask_mix={"missing_field": 1.0})) as s:
        run = run_llm_mode(tmp_path, config(s, tmp_path), ["drug"], 4, seed=2)
        r = run.reports[0]
        assert r.accepted == 0 and r.reasons == {"llm:schema_violation": 4} and s.total == 8
        assert not (tmp_path / "drug_sft_data.jsonl").exists()  # nothing that looks like a result
        assert not (tmp_path / "drug_sft_data.jsonl.manifest.json").exists()
        rejected = rows(tmp_path / "drug_sft_data.jsonl.rejects.jsonl")
        assert len(rejected) == 4 and all(row["raw"] for row in rejected)


def test_budget_stops_and_a_higher_cap_resumes_without_resending(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=ModelLike(ANSWERS, mix=ALL_VALID)) as server:
        first = run_llm_mode(
            tmp_path / "o", config(server, tmp_path, budget=10.0, concurrency=2), ["drug"], 20, seed=1, batch_size=10
        )
        assert first.budget_stopped and 0 < first.missing["drug"] < 20
        assert 0.8 * 10.0 <= first.spent <= 10.0
        m = Manifest.load(tmp_path / "o" / "drug_sft_data.jsonl")
        assert m.extra["complete"] is False and m.extra["missing"] == first.missing["drug"]
        summary = json.loads((tmp_path / "o" / "synthesis_manifest.json").read_text(encoding="utf-8"))
        assert summary["run"]["paid_requests"] == server.total and summary["run"]["remaining"] == {
            "drug.llm": first.missing["drug"]
        }
        ranges = summary["run"]["remaining_indices"]["drug.llm"]  # exactly the samples a rerun has to make
        assert sum(end - start for start, end in ranges) == first.missing["drug"] and ranges[-1][1] == 20
        sent_before = server.total
        second = run_llm_mode(
            tmp_path / "o", config(server, tmp_path, budget=1000.0), ["drug"], 20, seed=1, batch_size=10
        )
        assert second.complete and second.reports[0].accepted + second.reports[0].rejected == 20
        assert server.total - sent_before >= first.missing["drug"]  # the missing ones (and their re-asks) only
        assert max(server.body_counts.values()) == 1  # no request was sent twice: paid answers came from the cache


#: deepseek-chat's list prices (USD per million tokens), for a budget test at realistic request costs
DEEPSEEK = {"input": 0.28, "output": 0.42, "cached_input": 0.028, "currency": "USD"}


@pytest.mark.parametrize("cap", [0.005, 0.01, 0.015])
def test_a_capped_run_spends_at_least_90_percent_of_its_cap(tmp_path: Path, cap: float) -> None:
    """Realistic prompt sizes (the fake counts tokens like a Chinese-capable tokenizer, system prompts hit the
    provider's prompt cache) at deepseek-chat's prices: reservations follow what answers really cost, and a request
    waits for the reservations in flight instead of being dropped, so the run stops close to its cap, never above."""
    with FakeOpenAIServer(responder=ModelLike(ANSWERS, mix=ALL_VALID), latency_s=0.005) as server:
        cfg = config(server, tmp_path, budget=cap, prices={"fake-model": DEEPSEEK}, concurrency=8)
        run = run_llm_mode(tmp_path / "out", cfg, ["critic", "drug"], 150, seed=4, batch_size=25, parallel_batches=2)
        paid = reported_cost(server, DEEPSEEK)  # cached prompt tokens priced as input: an upper bound
        assert run.budget_stopped and 0.9 * cap <= run.spent <= cap
        assert run.spent <= paid
        summary = json.loads((tmp_path / "out" / "synthesis_manifest.json").read_text(encoding="utf-8"))
        assert summary["run"]["paid_requests"] == server.total
        assert sum(summary["run"]["remaining"].values()) == 300 - sum(r.accepted + r.rejected for r in run.reports)


def test_overlapping_batches_write_the_same_files_within_the_request_limit(tmp_path: Path) -> None:
    """parallel_batches only changes the schedule: files are byte-identical to one batch at a time, every sample is
    asked once, and the batches in flight together never exceed the client's concurrency."""
    outputs = {}
    with FakeOpenAIServer(responder=ModelLike(ANSWERS, mix=ALL_VALID), latency_s=0.01) as server:
        for parallel in (1, 3):
            server.reset()
            out = tmp_path / f"p{parallel}"
            cfg = config(server, tmp_path, concurrency=4, cache_path=tmp_path / f"cache{parallel}.sqlite")
            run = run_llm_mode(out, cfg, ["drug", "critic"], 11, seed=4, batch_size=3, parallel_batches=parallel)
            assert run.complete and [r.agent for r in run.reports] == ["drug", "critic"]
            assert server.total >= 22  # each sample, plus re-asks of answers that failed a check
            assert max(server.body_counts.values()) == 1
            assert server.max_in_flight <= 4
            outputs[parallel] = {f.name: f.read_bytes() for f in sorted(out.glob("*.jsonl"))}
        assert server.max_in_flight == 4  # the limit was used, by batches side by side
    assert outputs[1] == outputs[3]  # data and rejects files


def test_quality_failures_are_reasked_then_rejected(tmp_path: Path) -> None:
    wrong_band = {"CriticOutput": [ANSWERS["CriticOutput"][3]]}  # schema-valid, score outside its band
    with FakeOpenAIServer(responder=ModelLike(wrong_band, mix=ALL_VALID, reask_mix=ALL_VALID)) as server:
        run = run_llm_mode(tmp_path, config(server, tmp_path), ["critic"], 4, seed=2)
        r = run.reports[0]
        assert r.accepted == 0 and r.reasons == {"quality:band": 4}
        assert server.total == 8  # one corrective re-ask each
        rejected = rows(tmp_path / "critic_sft_data.jsonl.rejects.jsonl")
        assert all("band" in row["problem"] and row["raw"] for row in rejected)


def test_chat_requests_are_build_messages_with_a_shared_prefix_and_the_agents_checks() -> None:
    from medtune_core.synthesis.llm_mode import QUALITY_PREFIX, build_chat_requests
    from medtune_core.synthesis.requests import build_messages, system_message

    systems = {}
    for name in ("preprocess", "critic", "check_rag", "diagnosis", "drug"):
        agent = get_agent(name)
        planned = build_chat_requests(name, 5, 10, 4)
        assert [i for i, _, _ in planned] == [10, 11, 12, 13]
        for _, inp, req in planned:
            assert list(req.messages) == build_messages(agent, inp)
            assert req.schema is agent.output_model and req.params == {"temperature": 0.7}
            good = agent.output_model.model_validate(agent.template_output(inp, random.Random(0)))
            assert req.check(good) is None
        assert planned[0][2].messages[0] is planned[-1][2].messages[0]  # system + few-shots built once per batch
        systems[name] = system_message(agent)
        assert system_message(agent) is systems[name]  # computed once per agent
        assert json.dumps(agent.response_schema(), ensure_ascii=False, separators=(",", ":")) in systems[name]
    assert len(set(systems.values())) == 5

    critic = get_agent("critic")
    _, inp, req = build_chat_requests(critic, 1, 0, 1)[0]
    bad = critic.output_model.model_validate(critic.template_output(inp, random.Random(0)))
    bad = bad.model_copy(update={"band": "优秀" if bad.score < 9 else "不合格"})
    problem = req.check(bad)
    assert problem is not None and problem.startswith(f"<root>: Value error, {QUALITY_PREFIX}: ") and "band" in problem


def test_system_message_follows_a_changed_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    from medtune_core.synthesis.requests import system_message

    agent = get_agent("drug")
    before = system_message(agent)
    monkeypatch.setattr(type(agent), "system_prompt", "另一个提示")
    assert system_message(agent).startswith("另一个提示") and system_message(agent) != before


def test_a_batch_without_answers_names_the_endpoint_and_the_setting(tmp_path: Path) -> None:
    from medtune_core.synthesis.llm_mode import BatchFailed, llm_batch

    cfg = LLMConfig(model="fake-model", base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0)
    with pytest.raises(BatchFailed) as err:
        llm_batch(cfg, "drug", 0, 0, 2, tmp_path)
    message = str(err.value)
    assert "drug batch 0: 2 of 2 requests got no answer (2 connection_refused)" in message
    assert "http://127.0.0.1:9/v1" in message and "fix base_url" in message
    assert not (tmp_path / ".batches").exists()  # nothing half-written


def test_the_schedule_starts_the_next_batch_when_any_ends_and_settles_what_a_budget_stop_left() -> None:
    """One schedule for the flow and the library: at most `parallel` batches out, the next one submitted when any
    of them ends (not the oldest), an agent completed as soon as its last batch is in, and after a budget stop the
    batches not started are settled as not run (the agents are still completed, with what they have)."""
    import concurrent.futures as cf
    import threading

    from medtune_core.synthesis.schedule import Batch, BatchSchedule, BudgetStop, wait_any_future

    release = {name: threading.Event() for name in ("a0", "a1", "b0", "b1")}
    events: list[str] = []
    plan = [Batch("a", "llm", 0, 2), Batch("a", "llm", 2, 2), Batch("b", "llm", 0, 2), Batch("b", "llm", 2, 2)]

    def work(b: Batch) -> str:
        key = f"{b.agent}{b.start // 2}"
        release[key].wait(5)
        if key == "b0":
            raise BudgetStop("budget reached", partial=f"part of {key}")
        return key

    with cf.ThreadPoolExecutor(4) as pool:
        schedule: BatchSchedule[str] = BatchSchedule(plan)

        def submit(b: Batch) -> cf.Future[str]:
            events.append(f"start {b.agent}{b.start // 2}")
            return pool.submit(work, b)

        def complete(key: tuple[str, str], results: list[str]) -> None:
            events.append(f"done {key[0]}: {results}")

        release["a1"].set()  # the second batch ends first: its place goes to b0 while a0 is still out
        threading.Timer(0.3, release["b0"].set).start()
        threading.Timer(0.6, release["a0"].set).start()
        schedule.run(submit, wait_any_future, complete, parallel=2)
    assert events == [
        "start a0",
        "start a1",
        "start b0",  # a1 ended first: its place went to b0 while a0 was still out
        "done b: ['part of b0']",  # the budget stop: b1 never started, b is written with what b0 got
        "done a: ['a0', 'a1']",  # a's last batch, still out at the stop, is waited for
    ]
    assert schedule.stopped == "budget reached" and "start b1" not in events
