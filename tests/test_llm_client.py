"""The LLM client layer against a local server speaking the OpenAI protocol, through the real ``openai`` SDK."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from medtune_core.llm import (
    BudgetExceeded,
    ChatRequest,
    ChatResult,
    CostLedger,
    Failed,
    LLMClient,
    LLMConfig,
    LLMError,
    ModelPrice,
    PriceTable,
    Rejected,
    ResponseCache,
    Usage,
    cost,
    extract_json,
    parse_retry_after,
    request_key,
)
from medtune_core.llm.pricing import price_usage
from tests.fakes.openai_server import FakeOpenAIServer, FakeRequest, Reply, fake_embedding, spawn_server

PRICE = ModelPrice(input=1000.0, output=2000.0, cached_input=100.0, currency="USD")  # per 1M: 0.001 $/input token
SECRET = "sk-live-TOPSECRET-0123456789abcdef"


class Diagnosis(BaseModel):
    answer: str
    score: int = Field(ge=1, le=5)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def make_client(server: FakeOpenAIServer, tmp_path: Path | None = None, **overrides) -> LLMClient:
    cfg = {
        "model": "fake-model",
        "base_url": server.base_url,
        "api_key": "test-key",
        "concurrency": 8,
        "timeout_s": 2.0,
        "max_retries": 6,
        "backoff_base_s": 0.001,
        "backoff_max_s": 0.01,
        "prices": {"fake-model": {"input": PRICE.input, "output": PRICE.output, "cached_input": PRICE.cached_input}},
    }
    if tmp_path is not None:
        cfg["cache_path"] = tmp_path / "llm_cache.sqlite"
    cfg.update(overrides)
    return LLMClient(LLMConfig(**cfg))


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def server():
    with FakeOpenAIServer(timeout_sleep_s=0.6) as s:
        yield s


def diagnosis_responder(req: FakeRequest) -> str:
    return json.dumps({"answer": f"dx for {req.last_user}", "score": 3}, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------------- retries
def test_retries_on_429_500_timeout_lose_and_duplicate_nothing(server):
    server.add_faults("429:0.05", "500", "timeout", "503", "disconnect", "429ms:20")
    client = make_client(server, timeout_s=1.5)  # generous: a loaded 2-core machine must not time out a healthy request
    requests = [ChatRequest(user(f"q{i:02d}")) for i in range(30)]

    results = run(client.run_many(requests))

    assert all(isinstance(r, ChatResult) for r in results), results
    assert [r.text for r in results] == [f"echo: q{i:02d}" for i in range(30)]  # in input order, nothing lost
    assert sorted(server.faults_served) == sorted(["429", "500", "timeout", "503", "disconnect", "429"])
    assert server.total == 30 + 6  # exactly one retry per fault
    assert len(server.body_counts) == 30 and sum(server.body_counts.values()) == 36
    assert client.ledger.requests == 30  # each answer accounted once
    assert client.ledger.counters["retries"] == 6
    assert sum(r.attempts for r in results) == 36


def test_retry_after_seconds_and_ms_are_honoured(server):
    client = make_client(server, backoff_base_s=0.0001)
    server.add_faults("429:0.4")
    t0 = time.perf_counter()
    assert run(client.chat(user("a"))).ok
    assert time.perf_counter() - t0 >= 0.4
    server.add_faults("429ms:250")
    t0 = time.perf_counter()
    assert run(client.chat(user("b"))).ok
    assert time.perf_counter() - t0 >= 0.25
    # without a header: full jitter in [0, min(backoff_max_s, base * 2**(attempt-1))]
    slow = make_client(server, backoff_base_s=1.0, backoff_max_s=4.0, retry_after_max_s=10.0)
    delays = [slow._backoff(attempt, None) for attempt in (1, 2, 3, 8) for _ in range(200)]
    assert all(0 <= d <= 4.0 for d in delays) and max(delays[:200]) <= 1.0 and max(delays[600:]) > 2.0
    assert 10.0 <= slow._backoff(1, 3600.0) <= 11.0  # a server's wait is honoured up to retry_after_max_s


def test_retries_exhausted_is_a_failed_result(server):
    server.add_faults("500", "500", "500", "500")
    result = run(make_client(server, max_retries=2).chat(user("x")))
    assert isinstance(result, Failed) and not result.ok
    assert result.reason == "retries_exhausted" and result.attempts == 3 and result.status_code == 500
    assert server.total == 3


def test_400_is_not_retried(server):
    server.add_faults("400")
    client = make_client(server)
    result = run(client.chat(user("x")))
    assert isinstance(result, Failed)
    assert result.reason == "http_400" and result.status_code == 400 and result.attempts == 1
    assert server.total == 1
    assert client.ledger.counters["failed:http_400"] == 1


def test_concurrency_is_bounded(server):
    server.latency_s = 0.05
    client = make_client(server, concurrency=3)
    results = run(client.run_many([ChatRequest(user(f"c{i}")) for i in range(12)]))
    assert all(r.ok for r in results)
    assert 2 <= server.max_in_flight <= 3


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after-ms": "1500", "Retry-After": "9"}) == 1.5
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= parse_retry_after({"Retry-After": date}) <= 31
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


# ------------------------------------------------------------------------------------------ structured output
def test_json_schema_path(server):
    client = make_client(server)
    result = run(client.chat_json(user("头痛三天"), Diagnosis))
    assert isinstance(result, ChatResult) and isinstance(result.data, Diagnosis)
    assert result.data.answer == "头痛三天" and not result.reasked
    body = server.bodies[-1]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "Diagnosis"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["answer", "score"]
    assert client.json_schema_supported is True


def test_json_schema_refused_falls_back_to_json_mode_for_good(server):
    server.json_schema_supported = False
    server.responder = diagnosis_responder
    client = make_client(server)
    first = run(client.chat_json(user("a"), Diagnosis))
    assert first.ok and first.data == Diagnosis(answer="dx for a", score=3)
    assert client.json_schema_supported is False
    assert [b["response_format"]["type"] for b in server.bodies] == ["json_schema", "json_object"]
    second = run(client.chat_json(user("b"), Diagnosis))
    assert second.ok and server.bodies[-1]["response_format"]["type"] == "json_object"
    assert server.total == 3
    system = server.bodies[-1]["messages"][0]
    assert system["role"] == "system" and "JSON" in system["content"] and '"score"' in system["content"]


def test_json_mode_invalid_answer_gets_one_corrective_reask(server):
    server.responder = diagnosis_responder
    server.add_faults("invalid_json")
    client = make_client(server, structured_output="json_object")
    messages = [{"role": "system", "content": "You are a doctor."}, *user("胸闷")]
    result = run(client.chat_json(messages, Diagnosis))
    assert isinstance(result, ChatResult) and result.reasked
    assert result.data == Diagnosis(answer=f"dx for {server.bodies[1]['messages'][-1]['content']}", score=3)
    assert server.total == 2
    reask = server.bodies[1]["messages"]
    assert reask[0]["content"].startswith("You are a doctor.") and "JSON schema" in reask[0]["content"]
    assert reask[-2]["role"] == "assistant" and "unterminated" in reask[-2]["content"]
    assert reask[-1]["role"] == "user" and "not valid JSON" in reask[-1]["content"]
    reported = server.reported_usage
    assert result.usage.prompt_tokens == reported[0]["prompt_tokens"] + reported[1]["prompt_tokens"]
    assert client.ledger.requests == 2


@pytest.mark.parametrize(
    ("faults", "reason"), [(["schema_violation"] * 2, "schema_violation"), (["invalid_json"] * 2, "invalid_json")]
)
def test_still_invalid_after_reask_is_rejected_not_raised(server, faults, reason):
    server.add_faults(*faults)
    client = make_client(server, structured_output="json_object")
    result = run(client.chat_json(user("x"), Diagnosis))
    assert isinstance(result, Rejected) and not result.ok
    assert result.reason == reason and result.detail
    if reason == "schema_violation":
        assert "answer: Field required" in result.detail
    assert result.cost > 0 and result.usage.prompt_tokens > 0  # paid for, counted
    assert server.total == 2
    assert client.ledger.counters[f"rejected:{reason}"] == 1


def test_schema_validators_drive_the_reask(server):
    answers = iter(['{"answer": "x", "score": 9}', '```json\n{"answer": "x", "score": 4}\n```'])
    server.responder = lambda req: next(answers)
    result = run(make_client(server).chat_json(user("x"), Diagnosis))
    assert result.ok and result.data.score == 4 and result.reasked
    assert "score: Input should be less than or equal to 5" in server.bodies[1]["messages"][-1]["content"]


def test_extract_json_tolerates_fences_and_prose():
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Here: {"a": [1, 2]} done') == {"a": [1, 2]}
    with pytest.raises(ValueError, match="not valid JSON"):
        extract_json("no json here")


# ---------------------------------------------------------------------------------------------------- cache
def test_cache_hit_sends_no_request_and_costs_nothing(server, tmp_path):
    first = make_client(server, tmp_path)
    a = run(first.chat(user("same"), temperature=0.2))
    assert a.ok and not a.cached and server.total == 1
    run(first.aclose())

    second = make_client(server, tmp_path)
    b = run(second.chat(user("same"), temperature=0.2))
    assert b.ok and b.cached and b.text == a.text and b.cost == 0.0 and b.usage == a.usage
    assert server.total == 1
    assert second.ledger.cache_hits == 1 and second.ledger.requests == 0 and second.ledger.spent() == 0.0
    assert second.ledger.saved_by_currency()["USD"] == pytest.approx(a.cost)
    c = run(second.chat(user("same"), temperature=0.9))  # other sampling parameters: another request
    assert c.ok and not c.cached and server.total == 2


def test_identical_requests_in_flight_are_sent_once(server, tmp_path):
    server.latency_s = 0.05
    client = make_client(server, tmp_path)
    results = run(client.run_many([ChatRequest(user("dup"))] * 5))
    assert all(r.ok for r in results) and server.total == 1
    assert client.ledger.requests == 1 and client.ledger.cache_hits == 4


def test_json_results_are_cached_including_reask(server, tmp_path):
    server.responder = diagnosis_responder
    server.add_faults("invalid_json")
    a = run(make_client(server, tmp_path, structured_output="json_object").chat_json(user("x"), Diagnosis))
    assert a.ok and a.reasked and server.total == 2
    b = run(make_client(server, tmp_path, structured_output="json_object").chat_json(user("x"), Diagnosis))
    assert b.ok and b.cached and b.data == a.data and server.total == 2


def test_cache_is_safe_from_threads_and_tasks(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")

    def worker(t: int) -> None:
        for i in range(40):
            key = request_key("chat", {"model": "m", "i": i, "t": t})
            cache.put(key, kind="chat", model="m", response={"t": t, "i": i}, usage=Usage(i, 1, 0))
            assert cache.get(key).response == {"t": t, "i": i}

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()

    async def tasks() -> None:
        await asyncio.gather(*(asyncio.to_thread(worker, 100 + t) for t in range(4)))

    run(tasks())
    for th in threads:
        th.join()
    assert len(cache) == 10 * 40
    assert request_key("chat", {"model": "m", "timeout": 3}) == request_key("chat", {"model": "m"})
    cache.close()


def test_run_killed_midway_then_rerun_resends_only_unanswered(server, tmp_path):
    server.latency_s = 0.05
    requests = [ChatRequest(user(f"k{i}")) for i in range(20)]

    async def killed() -> None:
        """Cancel the batch once a few answers are in (by count, not by time: CI machines are slow)."""
        client = make_client(server, tmp_path, concurrency=2)
        batch = asyncio.ensure_future(client.run_many(requests))
        while server.total < 4:
            await asyncio.sleep(0.01)
        batch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await batch

    run(killed())
    answered_before = server.total
    assert 0 < answered_before < 20
    results = run(make_client(server, tmp_path, concurrency=2).run_many(requests))
    assert all(r.ok for r in results)
    twice = [n for n in server.body_counts.values() if n > 1]
    assert len(server.body_counts) == 20
    assert len(twice) <= 2  # at most the requests in flight when it was killed (concurrency 2)


# ----------------------------------------------------------------------------------------------- cost, budget
def test_cost_totals_equal_reported_usage_times_prices(server):
    client = make_client(server)
    system = {"role": "system", "content": "你是一名经验丰富的全科医生，请根据症状给出建议。" * 3}
    requests = [ChatRequest([system, *user(f"症状 {i} " * (i + 1))]) for i in range(10)]
    results = run(client.run_many(requests))
    assert all(r.ok for r in results)
    usages = [Usage.from_openai(u) for u in server.reported_usage]
    assert any(u.cached_tokens > 0 for u in usages)  # the shared system prompt was cached by the "provider"
    expected = sum(price_usage(PRICE, u) for u in usages)
    assert client.ledger.spent("USD") == pytest.approx(expected)
    assert sum(r.cost for r in results) == pytest.approx(expected)
    assert client.ledger.usage == sum(usages, Usage())
    manual = sum(
        ((u.prompt_tokens - u.cached_tokens) * 1000 + u.cached_tokens * 100 + u.completion_tokens * 2000) / 1e6
        for u in usages
    )
    assert expected == pytest.approx(manual)
    assert client.ledger.summary()["requests"] == 10


def test_budget_cap_stops_before_exceeding_and_a_higher_cap_resumes(server, tmp_path):
    requests = [ChatRequest(user(f"sample {i:02d}"), params={"max_tokens": 20}) for i in range(20)]
    budget = 0.2
    first = make_client(server, tmp_path, budget=budget, concurrency=4)
    results = run(first.run_many(requests))
    done = [i for i, r in enumerate(results) if r.ok]
    stopped = [r for r in results if isinstance(r, BudgetExceeded)]
    assert done and stopped and len(done) + len(stopped) == 20
    assert first.ledger.spent("USD") <= budget
    assert server.total == len(done)  # budget-stopped requests were never sent
    assert all(s.budget == budget and s.spent + s.reserved + s.estimate > budget for s in stopped)
    assert all(s.spent <= budget for s in stopped)

    second = make_client(server, tmp_path, budget=10.0, concurrency=4)
    again = run(second.run_many(requests))
    assert all(isinstance(r, ChatResult) for r in again)
    assert [r.text for r in again] == [f"echo: sample {i:02d}" for i in range(20)]
    assert server.total == 20 and set(server.body_counts.values()) == {1}  # nothing answered was re-sent
    assert second.ledger.cache_hits == len(done) and second.ledger.requests == 20 - len(done)
    assert first.ledger.spent() + second.ledger.spent() == pytest.approx(
        sum(price_usage(PRICE, Usage.from_openai(u)) for u in server.reported_usage)
    )


def test_pilot_projects_cost_to_n(server, tmp_path):
    client = make_client(server, tmp_path)
    sample = [ChatRequest(user(f"pilot {i}")) for i in range(4)]
    report = run(client.pilot(sample, total_n=1000))
    assert report.k == 4 and report.ok == 4 and report.priced
    assert report.cost == pytest.approx(client.ledger.spent())
    assert report.projected_cost == pytest.approx(report.cost / 4 * 1000)
    assert "projected for 1000" in report.summary()
    again = run(make_client(server, tmp_path).pilot(sample, total_n=1000))  # from cache: same projection
    assert again.projected_cost == pytest.approx(report.projected_cost) and server.total == 4


# ------------------------------------------------------------------------------------------------------ pricing
def test_price_table_lookup_overrides_and_unknown(tmp_path):
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000, cached_tokens=500_000)
    c = cost("gpt-4o-mini-2024-07-18", usage)  # dated snapshot → family price
    assert c.known and c.currency == "USD" and c.amount == pytest.approx(0.5 * 0.15 + 0.5 * 0.075 + 0.60)
    assert cost("qwen-plus-latest", Usage(1_000_000)).currency == "CNY"
    assert PriceTable().lookup("deepseek/deepseek-chat") is not None
    unknown = cost("my-local-model", usage)
    assert unknown.amount == 0.0 and not unknown.known

    yaml_file = tmp_path / "prices.yaml"
    yaml_file.write_text("currency: CNY\nmodels:\n  my-local-model: {input: 1, output: 2}\n", encoding="utf-8")
    table = PriceTable.from_file(yaml_file)
    assert table.cost("my-local-model", Usage(1_000_000, 1_000_000)).amount == pytest.approx(3.0)
    assert table.lookup("my-local-model").currency == "CNY"
    json_file = tmp_path / "prices.json"
    json_file.write_text(json.dumps({"gpt-4o-mini": {"input": 9, "output": 9}}), encoding="utf-8")
    assert PriceTable().with_overrides(json_file).lookup("gpt-4o-mini").input == 9
    assert PriceTable().with_overrides({"x": {"input": 1}}).lookup("X").output == 0.0


def test_unpriced_model_costs_zero_and_is_counted(server):
    client = make_client(server, model="unlisted-model", prices=None)
    result = run(client.chat(user("x")))
    assert result.ok and result.cost == 0.0
    assert client.ledger.unpriced_requests == 1


# ------------------------------------------------------------------------------------------------------ secrets
def test_api_key_never_in_logs_reprs_errors_or_cache(tmp_path, caplog):
    for name in (None, "openai", "httpx", "httpx2", "httpcore", "medtune_core"):
        caplog.set_level(logging.DEBUG, logger=name)
    with FakeOpenAIServer(api_key="the-right-key") as srv:
        client = make_client(srv, tmp_path, api_key=SECRET, max_retries=1)
        result = run(client.chat(user("x")))
        assert isinstance(result, Failed) and result.reason == "auth" and result.status_code == 401
        assert "Incorrect API key" in result.detail  # the server echoed the key; it was scrubbed
        with pytest.raises(LLMError) as err:
            run(client.embeddings(["a"], model="fake-embedding"))

        srv.api_key = SECRET  # now the key is right: the success path must not log it either
        ok = make_client(srv, tmp_path, api_key=SECRET)
        assert run(ok.chat(user("fine"))).ok
        assert run(ok.chat_json(user("fine"), Diagnosis)).ok
        assert run(ok.embeddings(["a", "b"], model="fake-embedding")).ok

    texts = [
        caplog.text,
        repr(result),
        str(result),
        str(err.value),
        repr(err.value),
        repr(client),
        repr(client.config),
        str(client.config),
        client.config.model_dump_json(),
        json.dumps(client.ledger.summary()),
        repr(client.ledger),
    ]
    for text in texts:
        assert SECRET not in text
        assert "TOPSECRET" not in text
    with sqlite3.connect(tmp_path / "llm_cache.sqlite") as conn:
        dump = "\n".join(conn.iterdump())
    assert "TOPSECRET" not in dump and "the-right-key" not in dump
    assert "**********" in repr(client.config)


# --------------------------------------------------------------------------------------------------- embeddings
def test_embeddings_in_order_batched_and_cached(server, tmp_path):
    texts = [f"文本 {i}" for i in range(23)] + ["文本 3"]  # one duplicate
    client = make_client(server, tmp_path)
    result = run(client.embeddings(texts, model="fake-embedding", batch_size=4))
    assert result.ok and len(result.vectors) == 24
    for text, vec in zip(texts, result.vectors, strict=True):
        assert vec == pytest.approx(fake_embedding(text, 8, "fake-embedding"))
    assert server.by_path["/v1/embeddings"] == math.ceil(23 / 4)
    assert result.usage.prompt_tokens == sum(u["prompt_tokens"] for u in server.reported_usage)

    again = run(make_client(server, tmp_path).embeddings(texts, model="fake-embedding", batch_size=7))
    assert again.vectors == result.vectors and again.cache_hits == 24
    assert server.by_path["/v1/embeddings"] == math.ceil(23 / 4)


def test_embeddings_retry_base64_dimensions_and_provider_batch_limit(server):
    server.add_faults("500")
    client = make_client(server, embedding_encoding_format="base64")
    result = run(client.embeddings(["a", "b", "c"], model="fake-embedding", dimensions=16))
    assert result.ok and result.vectors[1] == pytest.approx(fake_embedding("b", 16, "fake-embedding"))
    assert server.bodies[-1]["encoding_format"] == "base64" and server.bodies[-1]["dimensions"] == 16
    server.reset()
    texts = [f"t{i}" for i in range(25)]
    run(make_client(server).embeddings(texts, model="text-embedding-v3", batch_size=64))
    assert server.by_path["/v1/embeddings"] == 3  # DashScope takes at most 10 texts a request


# -------------------------------------------------------------------------------------------------- streaming
def test_stream_mode_collects_content_reasoning_and_usage(server):
    server.responder = lambda req: Reply(content="streamed answer " * 4, reasoning_content="thinking...")
    client = make_client(server, stream=True)
    result = run(client.chat(user("s")))
    assert result.ok and result.text == "streamed answer " * 4 and result.reasoning == "thinking..."
    assert server.bodies[-1]["stream"] is True
    assert result.usage == Usage.from_openai(server.reported_usage[-1])
    assert client.ledger.spent() == pytest.approx(price_usage(PRICE, result.usage))


def test_shared_ledger_caps_several_clients(server):
    ledger = CostLedger()
    a = LLMClient(make_client(server).config.model_copy(update={"budget": 0.05}), ledger=ledger)
    b = LLMClient(make_client(server).config.model_copy(update={"budget": 0.05}), ledger=ledger)
    for client in (a, b, a, b, a, b):
        run(client.chat(user("shared ledger request"), max_tokens=5))
    assert ledger.spent() <= 0.05
    assert ledger.counters.get("budget_exceeded", 0) >= 1


def test_config_from_settings_picks_the_provider_key(monkeypatch):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "ds-key-123")
    monkeypatch.setenv("OPENAI_API_KEY", "oa-key-456")
    ds = LLMConfig.from_settings("deepseek-chat", "https://api.deepseek.com/v1")
    assert ds.api_key.get_secret_value() == "ds-key-123" and "ds-key-123" not in repr(ds)
    oa = LLMConfig.from_settings("gpt-4o-mini", "https://api.openai.com/v1")
    assert oa.api_key.get_secret_value() == "oa-key-456"


def test_one_client_across_event_loops_and_a_server_in_a_child_process():
    with spawn_server() as url:
        client = LLMClient(LLMConfig(model="m", base_url=url, api_key="k"))
        assert run(client.chat(user("one"))).text == "echo: one"
        assert run(client.chat(user("two"))).text == "echo: two"  # a new loop: the client rebinds
        run(client.aclose())


# ------------------------------------------------------------------------------------------- cheap per request
class Triage(BaseModel):
    """Same field names as Diagnosis, other constraints: its schema must never be served for Diagnosis."""

    answer: str = Field(max_length=50)
    score: int = Field(ge=0, le=10)


def test_json_schema_is_cached_per_class_and_never_mixed_up(server):
    from medtune_core.llm.client import _schema_parts

    client = make_client(server)
    for model in (Diagnosis, Triage, Diagnosis, Triage):
        assert run(client.chat_json(user(f"{model.__name__}"), model)).ok
    sent = [b["response_format"]["json_schema"] for b in server.bodies]
    assert [s["name"] for s in sent] == ["Diagnosis", "Triage", "Diagnosis", "Triage"]
    assert [s["schema"] for s in sent] == [m.model_json_schema() for m in (Diagnosis, Triage, Diagnosis, Triage)]
    assert sent[0]["schema"] != sent[1]["schema"]
    assert _schema_parts(Diagnosis) is _schema_parts(Diagnosis)  # computed once
    assert _schema_parts(Diagnosis)[1] == Diagnosis.model_json_schema()  # and not mutated by the requests

    mode = make_client(server, structured_output="json_object")
    server.responder = diagnosis_responder
    for model in (Triage, Diagnosis):
        assert run(mode.chat_json(user("x"), model)).ok
        instruction = server.bodies[-1]["messages"][0]["content"]
        assert json.dumps(model.model_json_schema(), ensure_ascii=False) in instruction


def test_check_sees_the_validated_answer_and_drives_the_reask(server):
    server.responder = diagnosis_responder
    seen: list[Diagnosis] = []

    def only_low_scores(answer: Diagnosis) -> str | None:
        seen.append(answer)
        return None if answer.score < 3 else f"score {answer.score} is too high"

    result = run(make_client(server).chat_json(user("a"), Diagnosis, check=only_low_scores))
    assert isinstance(result, Rejected) and result.reason == "schema_violation"
    assert result.detail == "score 3 is too high" and server.total == 2
    assert "score 3 is too high" in server.bodies[1]["messages"][-1]["content"]  # the re-ask names the problem
    assert all(isinstance(a, Diagnosis) for a in seen) and len(seen) == 2

    def raises(answer: Diagnosis) -> str | None:
        raise ValueError("no good")

    result = run(make_client(server).chat_json(user("b"), Diagnosis, check=raises))
    assert isinstance(result, Rejected) and result.detail == "no good"
    ok = run(make_client(server).run_many([ChatRequest(user("c"), Diagnosis, check=lambda a: None)]))
    assert ok[0].ok and ok[0].data == Diagnosis(answer="dx for c", score=3)


def test_post_path_sends_what_create_sends(server):
    """The client's ``post`` shortcut and the SDK's ``chat.completions.create`` put the same request on the wire."""
    import openai

    params = {
        "max_tokens": 20,
        "temperature": 0.3,
        "response_format": {"type": "json_object"},
        "extra_body": {"top_k": 5},
        "extra_headers": {"X-Medtune-Test": "1"},
    }
    client = make_client(server)
    assert run(client.chat(user("same"), **params)).ok

    async def by_create() -> None:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test-key", max_retries=0) as sdk:
            await sdk.chat.completions.create(model="fake-model", messages=user("same"), **params)

    run(by_create())
    assert server.bodies[0] == server.bodies[1]
    assert server.bodies[0]["top_k"] == 5 and "extra_body" not in server.bodies[0]
    with pytest.raises(TypeError, match="no_such_param"):
        run(client.chat(user("x"), no_such_param=1))


def test_cache_hit_returns_identical_content(server, tmp_path):
    server.latency_s = 0.02
    requests = [ChatRequest(user(f"病例 {i}"), Diagnosis) for i in range(12)]
    first = make_client(server, tmp_path)
    a = run(first.run_many(requests))
    assert all(r.ok and not r.cached for r in a) and server.total == 12
    assert len(first.cache) == 12  # written when the batch returned
    again = run(first.chat_json(requests[0].messages, Diagnosis))  # asked again later: from the cache
    assert again.cached and again.text == a[0].text

    second = make_client(server, tmp_path)  # a later run (another process, as far as the file is concerned)
    b = run(second.run_many(requests))
    assert server.total == 12
    for x, y in zip(a, b, strict=True):
        assert y.cached and y.cost == 0.0
        assert (y.text, y.data, y.usage, y.raw, y.finish_reason) == (x.text, x.data, x.usage, x.raw, x.finish_reason)


def test_deferred_cache_writes_are_seen_at_once_and_committed_together(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    assert cache.put_deferred("k1", kind="chat", model="m", response={"a": 1}, usage=Usage(1, 2, 0)) is True
    assert cache.put_deferred("k2", kind="chat", model="m", response={"b": 2}, usage=Usage(3, 4, 1)) is False
    assert cache.get("k1").response == {"a": 1} and "k2" in cache and cache.get("k2").usage == Usage(3, 4, 1)
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 0  # not on disk yet
    cache.flush()
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 2
    cache.put_deferred("k3", kind="chat", model="m", response={"c": 3}, usage=Usage())
    assert cache.stats().entries == 3 and cache.writes == 3
    cache.put_deferred("k4", kind="chat", model="m", response={"d": 4}, usage=Usage())
    cache.close()  # flushes
    with ResponseCache(path) as reopened:
        assert reopened.get("k4").response == {"d": 4} and len(reopened) == 4


@pytest.mark.parametrize("backend", ["httpx", "aiohttp"])
def test_http_backends_behave_alike(server, backend):
    server.add_faults("429:0.01", "500", "disconnect")
    client = make_client(server, http_backend=backend)
    results = run(client.run_many([ChatRequest(user(f"q{i}")) for i in range(6)]))
    assert [r.text for r in results] == [f"echo: q{i}" for i in range(6)]
    assert server.total == 9 and client.ledger.counters["retries"] == 3
    assert server.bodies[-1]["model"] == "fake-model"
    run(client.aclose())


def test_aiohttp_backend_missing(server, monkeypatch):
    import openai

    class Missing:
        def __init__(self, **_: object) -> None:
            raise RuntimeError("To use the aiohttp client you must have installed the package with the `aiohttp` extra")

    monkeypatch.setattr(openai, "DefaultAioHttpClient", Missing)
    assert run(make_client(server).chat(user("auto falls back"))).text == "echo: auto falls back"
    with pytest.raises(LLMError, match="aiohttp"):
        run(make_client(server, http_backend="aiohttp").chat(user("x")))


def test_a_response_that_is_not_json_is_a_failed_result():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotJSON(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"<html>proxy error</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), NotJSON)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        result = run(LLMClient(LLMConfig(model="m", base_url=url, api_key="k", max_retries=0)).chat(user("x")))
        assert isinstance(result, Failed) and result.reason == "bad_response" and "not a JSON object" in result.detail
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_response_cache_is_separate_per_endpoint() -> None:
    """Scheme, host, port and path name the cache namespace: another port of the same host is another server."""
    from medtune_core.llm.client import cache_namespace_of

    ds = LLMConfig(model="m", base_url="https://api.deepseek.com/v1")
    oa = LLMConfig(model="m", base_url="https://api.openai.com/v1/")
    assert cache_namespace_of(ds) == "https://api.deepseek.com:443/v1"
    assert cache_namespace_of(oa) == "https://api.openai.com:443/v1"
    a, b = (LLMConfig(model="m", base_url=f"http://127.0.0.1:{p}/v1") for p in (1234, 1235))
    assert cache_namespace_of(a) != cache_namespace_of(b)
    assert cache_namespace_of(LLMConfig(model="m", base_url="http://127.0.0.1:1234/v2")) != cache_namespace_of(a)
    assert cache_namespace_of(LLMConfig(model="m", base_url=oa.base_url, cache_namespace="team-a")) == "team-a"


def test_a_dead_endpoint_is_not_answered_from_another_ports_cache(server, tmp_path):
    assert run(make_client(server, tmp_path).chat(user("cached"))).ok
    dead = make_client(server, tmp_path, base_url="http://127.0.0.1:9/v1", max_retries=0)
    result = run(dead.chat(user("cached")))
    assert isinstance(result, Failed) and result.reason == "connection_refused"
    assert "http://127.0.0.1:9/v1" in result.detail and "base_url" in result.detail


def test_the_client_uses_only_public_sdk_names() -> None:
    """No ``openai._private`` module or attribute: an SDK release may move those without notice."""
    import inspect
    import re

    import medtune_core.llm.client as module

    source = inspect.getsource(module)
    assert not re.search(r"openai\._|from openai\._|inspect\.signature", source)
    assert not re.search(r"""\._client\b|["']_client["']""", source)  # nor the SDK client's private HTTP client
    assert {"model", "messages", "response_format", "temperature", "extra_body"} <= module.CHAT_PARAMS


def test_errors_name_the_endpoint_the_cause_and_the_setting_to_change():
    """401, an unknown model (404), a closed port and an unknown host: each Failed says what happened, where
    (base_url) and which parameter to change."""
    with FakeOpenAIServer(api_key="right-key", strict_models=True) as srv:
        wrong_key = run(make_client(srv, api_key="wrong-key").chat(user("x")))
        assert wrong_key.reason == "auth" and srv.base_url in wrong_key.detail
        assert "OPENAI_API_KEY" in wrong_key.detail and "api_key" in wrong_key.detail
        wrong_model = run(make_client(srv, api_key="right-key", model="no-such-model").chat(user("x")))
        assert wrong_model.reason == "model_not_found" and wrong_model.status_code == 404
        assert "'no-such-model'" in wrong_model.detail and "fix model" in wrong_model.detail
        for backend in ("aiohttp", "httpx"):  # aiohttp reports a refused connection as a connect timeout
            closed = run(
                make_client(srv, base_url="http://127.0.0.1:9/v1", max_retries=1, http_backend=backend).chat(user("x"))
            )
            assert closed.reason == "connection_refused" and closed.attempts == 2
            assert "http://127.0.0.1:9/v1" in closed.detail and "fix base_url" in closed.detail
        unknown = run(make_client(srv, base_url="http://no-such-host.invalid/v1", max_retries=3).chat(user("x")))
        assert unknown.reason == "dns" and unknown.attempts == 1 and "fix base_url" in unknown.detail  # not retried


def test_budget_reservations_follow_what_answers_cost_also_from_the_cache(server, tmp_path):
    """The first reservation is the conservative estimate; answers (paid, or served from the cache after a pilot)
    calibrate it down to about what a request really costs, and requests wait for reservations in flight instead of
    being dropped: a cap of ~5 requests' cost is spent on 4-5 of them, never more."""
    requests = [ChatRequest(user(f"问题 {i}" * 20), Diagnosis) for i in range(12)]
    pilot = make_client(server, tmp_path)
    assert all(r.ok for r in run(pilot.run_many(requests[:3])))
    real = pilot.ledger.spent("USD") / 3

    capped = make_client(server, tmp_path, budget=real * 5.2, concurrency=4)
    conservative = capped._estimate(
        "chat", capped._json_payload(requests[5].messages, Diagnosis, None, {}, "json_schema")
    )
    assert capped.ledger.calibrated("chat", "fake-model", conservative.amount) == conservative.amount  # nothing seen
    results = run(capped.run_many(requests))
    ratio = capped.ledger.calibrated("chat", "fake-model", conservative.amount) / conservative.amount
    assert ratio < 0.5  # the cache hits of the pilot's 3 answers calibrated it
    paid = capped.ledger.spent("USD")
    assert real * 5.2 * 0.75 <= paid <= real * 5.2
    assert sum(isinstance(r, BudgetExceeded) for r in results) == 12 - 3 - capped.ledger.requests
