"""LLM mode of the synthesis core against the local OpenAI-protocol server (real ``openai`` SDK)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("medtune_core.llm.client", reason="the LLM client layer is not there yet")
pytest.importorskip("tests.fakes.openai_server", reason="the fake OpenAI server is not there yet")

from medtune_core.dataio import DatasetReader, Manifest
from medtune_core.llm import LLMConfig
from medtune_core.synthesis import get_agent
from medtune_core.synthesis.llm_mode import run_llm_mode
from medtune_core.synthesis.requests import USER_PREFIX
from tests.fakes.openai_server import FakeOpenAIServer, FakeRequest

PRICES = {"fake-model": {"input": 1000.0, "output": 2000.0, "cached_input": 1000.0, "currency": "USD"}}


def template_responder(req: FakeRequest) -> str:
    """Answer like a good model: the agent's own template output for the input in the last user turn."""
    system = req.messages[0]["content"]
    agent = next(
        get_agent(n)
        for n in ("preprocess", "critic", "check_rag", "diagnosis", "drug")
        if system.startswith(get_agent(n).system_prompt)
    )
    asked = [m["content"] for m in req.messages if m["role"] == "user" and m["content"].startswith(USER_PREFIX)]
    inp = json.loads(asked[-1][len(USER_PREFIX) :])  # the last input (a re-ask appends a correction turn)
    return json.dumps(agent.template_output(inp, random.Random(asked[-1])), ensure_ascii=False)


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


def reported_cost(server: FakeOpenAIServer) -> float:
    return sum(u["prompt_tokens"] * 1000 + u["completion_tokens"] * 2000 for u in server.reported_usage) / 1e6


def test_llm_mode_writes_valid_files_through_faults(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=template_responder) as server:
        server.add_faults("429:0.01", "500", "schema_violation", "invalid_json")
        run = run_llm_mode(
            tmp_path / "out", config(server, tmp_path), ["diagnosis", "check_rag"], 12, seed=3, batch_size=5
        )
        assert run.complete and not run.budget_stopped
        assert server.faults_served  # faults were served and recovered from (retries, re-asks)
        for r in run.reports:
            assert Path(r.path).name == f"{r.agent}_sft_data.jsonl"
            assert r.accepted == 12 and r.rejected == 0
            assert len(list(DatasetReader(r.path, policy="strict"))) == 12
            m = Manifest.load(r.path)
            assert m.extra["complete"] is True and m.extra["counts"]["accepted"] == 12
        assert sum(r.cost for r in run.reports) == pytest.approx(reported_cost(server), rel=1e-9)
        assert run.spent == pytest.approx(reported_cost(server), rel=1e-9)
        assert sum(r.input_tokens for r in run.reports) == sum(u["prompt_tokens"] for u in server.reported_usage)


def test_budget_stops_and_a_higher_cap_resumes_without_resending(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=template_responder) as server:
        first = run_llm_mode(
            tmp_path / "o", config(server, tmp_path, budget=10.0, concurrency=2), ["drug"], 20, seed=1, batch_size=10
        )
        assert first.budget_stopped and 0 < first.missing["drug"] < 20
        assert first.spent <= 10.0
        m = Manifest.load(tmp_path / "o" / "drug_sft_data.jsonl")
        assert m.extra["complete"] is False and m.rows == 20 - first.missing["drug"]
        sent_before = server.total
        second = run_llm_mode(
            tmp_path / "o", config(server, tmp_path, budget=1000.0), ["drug"], 20, seed=1, batch_size=10
        )
        assert second.complete and second.reports[0].accepted == 20
        assert server.total - sent_before == first.missing["drug"]
        assert max(server.body_counts.values()) == 1  # no request was sent twice


def test_overlapping_batches_write_the_same_files_within_the_request_limit(tmp_path: Path) -> None:
    """parallel_batches only changes the schedule: files are byte-identical to one batch at a time, every sample is
    asked once, and the batches in flight together never exceed the client's concurrency."""
    outputs = {}
    with FakeOpenAIServer(responder=template_responder, latency_s=0.01) as server:
        for parallel in (1, 3):
            server.reset()
            out = tmp_path / f"p{parallel}"
            cfg = config(server, tmp_path, concurrency=4, cache_path=tmp_path / f"cache{parallel}.sqlite")
            run = run_llm_mode(out, cfg, ["drug", "critic"], 11, seed=4, batch_size=3, parallel_batches=parallel)
            assert run.complete and [r.agent for r in run.reports] == ["drug", "critic"]
            assert server.total == 22 and max(server.body_counts.values()) == 1
            assert server.max_in_flight <= 4
            outputs[parallel] = {f.name: f.read_bytes() for f in sorted(out.glob("*.jsonl"))}
        assert server.max_in_flight == 4  # the limit was used, by batches side by side
    data = ["critic_sft_data.jsonl", "drug_sft_data.jsonl"]
    assert all(outputs[1][name].count(b"\n") == 11 for name in data)
    assert outputs[1] == outputs[3]  # data and rejects files


def test_quality_failures_are_reasked_then_rejected(tmp_path: Path) -> None:
    def bad_critic(req: FakeRequest) -> str:
        out = json.loads(template_responder(req))
        out["band"] = "优秀" if out["score"] < 9 else "不合格"  # schema-valid, wrong band
        return json.dumps(out, ensure_ascii=False)

    with FakeOpenAIServer(responder=bad_critic) as server:
        run = run_llm_mode(tmp_path, config(server, tmp_path), ["critic"], 4, seed=2)
        r = run.reports[0]
        assert r.accepted == 0 and r.reasons == {"quality:band": 4}
        assert server.total == 8  # one corrective re-ask each
        rows = [json.loads(x) for x in (tmp_path / "critic_sft_data.jsonl.rejects.jsonl").read_text().splitlines()]
        assert all("band" in row["problem"] and row["raw"] for row in rows)


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
