"""Flow ``data-synthesis`` on the real Prefect engine: template mode for all agents, cached re-runs, a lost batch
regenerated alone, LLM mode against the fake OpenAI server, and the nightly deployment definition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.data_synthesis import DataSynthesisParams, data_synthesis, nightly_deployment, seed_for_date
from flows.registry import load_flow
from medtune_core.dataio import DatasetReader, Manifest
from tests.fakes.openai_server import FakeOpenAIServer, ModelLike
from tests.flow_states import task_states
from tests.test_synthesis_llm import ALL_VALID, ANSWERS, GOOD_ANSWERS, good_model

AGENTS = ["preprocess", "critic", "check_rag", "diagnosis", "drug"]


def test_seed_mode_all_agents_then_cached(prefect_harness, tmp_path: Path) -> None:
    params = DataSynthesisParams(agents="all", mode="seed", num_samples=50, output_dir=tmp_path, batch_size=20)
    state = data_synthesis(params=params, return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    assert sorted(k for k in out if k != "summary") == sorted(f"{a}.seed" for a in AGENTS)
    for agent in AGENTS:
        path = Path(out[f"{agent}.seed"])
        assert path.name == f"{agent}_seed.jsonl"
        assert len(list(DatasetReader(path, policy="strict"))) == Manifest.load(path).rows >= 48
    summary = json.loads(Path(out["summary"]).read_text(encoding="utf-8"))
    assert [a["agent"] for a in summary["agents"]] == AGENTS
    first = {a: Path(out[f"{a}.seed"]).read_bytes() for a in AGENTS}

    again = data_synthesis(params=params, return_state=True)
    assert again.is_completed()
    states = task_states(again.state_details.flow_run_id, 20)
    assert set(states["synthesis-seed-batch"]) == {"Cached"} and len(states["synthesis-seed-batch"]) == 15
    assert set(states["synthesis-finalize"]) == {"Cached"}
    assert {a: Path(out[f"{a}.seed"]).read_bytes() for a in AGENTS} == first

    # a lost batch file (a half-done run) is regenerated alone; the data comes out identical
    lost = tmp_path / ".batches" / "drug_seed_0000020_20.jsonl"
    lost.unlink()
    third = data_synthesis(params=params, return_state=True)
    assert third.is_completed()
    states = task_states(third.state_details.flow_run_id, 20)
    batch_states = states["synthesis-seed-batch"]
    assert batch_states.count("Completed") == 1 and batch_states.count("Cached") == 15
    assert lost.is_file() and Path(out["drug.seed"]).read_bytes() == first["drug"]


def test_cli_style_parameters_and_registry(tmp_path: Path) -> None:
    flow_obj, model = load_flow("data-synthesis")
    assert flow_obj is data_synthesis and model is DataSynthesisParams
    p = model.model_validate({"output_dir": str(tmp_path)})
    assert p.agent_list() == AGENTS and {p.size_of(a) for a in AGENTS} == {50} and p.mode == "template"
    p = model.model_validate({"agents": "critic,drug", "sizes": "recommended", "mode": "both"})
    assert p.agent_list() == ["critic", "drug"] and p.size_of("drug") == 5000 and p.sources() == ["seed", "llm"]
    form = model.model_json_schema()
    assert "enum" in json.dumps(form["properties"]["agents"]) and "mode" in form["properties"]


def test_llm_mode_against_fake_server_then_cached(prefect_harness, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path / "home"))
    with FakeOpenAIServer(responder=good_model()) as server:
        params = DataSynthesisParams(
            agents=["critic", "drug"],
            mode="both",
            num_samples=6,
            model="fake-model",
            base_url=server.base_url,
            output_dir=tmp_path / "out",
            batch_size=4,
        )
        state = data_synthesis(params=params, return_state=True)
        assert state.is_completed(), state.message
        out = state.result()
        assert set(out) == {"critic.seed", "drug.seed", "critic.llm", "drug.llm", "summary"}
        for key in ("critic.llm", "drug.llm"):
            assert Path(out[key]).name.endswith("_sft_data.jsonl")
            assert len(list(DatasetReader(out[key], policy="strict"))) == 6
        sent = server.total
        assert sent == 12
        again = data_synthesis(params=params, return_state=True)
        assert again.is_completed() and server.total == sent  # nothing sent twice


def test_an_all_rejected_run_fails_with_its_reasons_and_leaves_no_data_file(
    prefect_harness, tmp_path: Path, monkeypatch
) -> None:
    """Every answer off-schema, every re-ask still missing a field: the run is Failed (not COMPLETED), its message is a
    table of reject reasons with what was paid, and there is no (empty) data file that looks like a result."""
    monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path / "home"))
    broken = ModelLike(ANSWERS, mix={"off_schema": 1.0}, reask_mix={"missing_field": 1.0})
    with FakeOpenAIServer(responder=broken) as server:
        params = llm_params(server, tmp_path, num_samples=4, prices={"fake-model": {"input": 1.0, "output": 2.0}})
        state = data_synthesis(params=params, return_state=True)
        assert state.is_failed()
        assert "too few usable rows" in state.message and "llm:schema_violation: 4" in state.message
        assert "paid 8 requests" in state.message and server.total == 8
    out = tmp_path / "out"
    assert not (out / "drug_sft_data.jsonl").exists()
    assert len((out / "drug_sft_data.jsonl.rejects.jsonl").read_text(encoding="utf-8").splitlines()) == 4
    summary = json.loads((out / "synthesis_manifest.json").read_text(encoding="utf-8"))
    assert summary["agents"][0]["accepted"] == 0 and summary["run"]["paid_requests"] == 8


def test_a_low_yield_fails_and_min_yield_zero_accepts_it(prefect_harness, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path / "home"))
    half = ModelLike(
        {"CriticOutput": GOOD_ANSWERS["CriticOutput"] + [ANSWERS["CriticOutput"][3]] * 3},
        mix=ALL_VALID,
        reask_mix={"off_schema": 1.0},
    )
    with FakeOpenAIServer(responder=half) as server:
        params = llm_params(server, tmp_path, agents=["critic"], num_samples=8, min_yield=0.9)
        state = data_synthesis(params=params, return_state=True)
        assert state.is_failed() and "critic.llm" in state.message and "| needed" in state.message
        report = json.loads((tmp_path / "out" / "synthesis_manifest.json").read_text(encoding="utf-8"))["agents"][0]
        assert 0 < report["accepted"] < 8 * 0.9
        sent = server.total
        lenient = data_synthesis(params=llm_params(server, tmp_path, agents=["critic"], num_samples=8, min_yield=0.0))
        assert Path(lenient["critic.llm"]).is_file() and server.total == sent  # all from the caches


def test_a_pilot_without_a_usable_answer_fails(prefect_harness, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path / "home"))
    broken = ModelLike(ANSWERS, mix={"truncated": 1.0}, reask_mix={"truncated": 1.0})
    with FakeOpenAIServer(responder=broken) as server:
        state = data_synthesis(params=llm_params(server, tmp_path, pilot=3), return_state=True)
        assert state.is_failed() and "pilot got no usable answer" in state.message
        assert "drug: 0/3 usable" in state.message and "truncated" in state.message


def test_nightly_deployment_definition() -> None:
    import datetime as dt

    dep = nightly_deployment()
    assert dep.name == "nightly"
    schedule = dep.schedules[0].schedule
    assert schedule.cron == "0 2 * * *" and schedule.timezone == "Asia/Shanghai"
    assert dep.parameters["params"]["seed"] is None and dep.parameters["params"]["sizes"] == "minimum"
    assert seed_for_date(dt.date(2026, 11, 3)) == 20261103


def test_dated_run_writes_into_its_own_folder(prefect_harness, tmp_path: Path) -> None:
    params = DataSynthesisParams(agents=["drug"], num_samples=3, seed=None, output_dir=tmp_path / "nightly")
    out = data_synthesis(params)
    seed = json.loads(Path(out["summary"]).read_text(encoding="utf-8"))["params"]["seed"]
    assert 20260101 <= seed <= 21000101
    assert Path(out["drug.seed"]).parent == tmp_path / "nightly" / str(seed)
    assert Path(out["summary"]).parent == tmp_path / "nightly" / str(seed)


def llm_params(server, tmp_path: Path, **overrides) -> DataSynthesisParams:
    """LLM mode for the drug agent against the fake server: 12 samples in batches of 2 unless overridden."""
    values = {
        "agents": ["drug"],
        "mode": "llm",
        "num_samples": 12,
        "model": "fake-model",
        "base_url": server.base_url,
        "output_dir": tmp_path / "out",
        "batch_size": 2,
    }
    return DataSynthesisParams(**{**values, **overrides})


def test_llm_batches_overlap_within_one_request_limit(prefect_harness, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path / "home"))
    with FakeOpenAIServer(responder=good_model(), latency_s=0.5) as server:
        # 6 batches of 2, 3 running at once, one limit of 3 requests for all of them
        params = llm_params(server, tmp_path, concurrency=3, parallel_batches=3)
        state = data_synthesis(params=params, return_state=True)
        assert state.is_completed(), state.message
        assert len(list(DatasetReader(state.result()["drug.llm"], policy="strict"))) == 12
        assert server.total == 12
        assert server.max_in_flight == 3  # batches overlapped (one batch alone has 2) and never exceeded the limit


def test_a_short_batch_frees_its_place_and_agents_are_written_as_they_finish(
    prefect_harness, tmp_path: Path, monkeypatch
) -> None:
    """One slow answer holds drug's first batch: its short second batch ending must let critic's batches start, and
    critic's file must be written while drug's slow batch is still out (not after every batch, in plan order)."""
    import time

    from medtune_core.synthesis import get_agent
    from medtune_core.synthesis.requests import user_message
    from medtune_core.synthesis.seed import sample_input

    monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path / "home"))
    slow = user_message(sample_input(get_agent("drug"), 0, 1, source="llm"))  # drug sample 1, in batch 0-1
    slow_answered: list[float] = []

    model = good_model()

    def responder(req):
        answer = model(req)
        if req.messages[-1]["content"] == slow:
            time.sleep(3.0)
            slow_answered.append(time.time())
        return answer

    with FakeOpenAIServer(responder=responder, latency_s=0.05) as server:
        params = llm_params(
            server, tmp_path, agents=["drug", "critic"], num_samples=3, concurrency=4, parallel_batches=2, seed=0
        )
        state = data_synthesis(params=params, return_state=True)
        assert state.is_completed(), state.message
        assert server.total == 6
    out = tmp_path / "out"
    assert (out / "critic_sft_data.jsonl").stat().st_mtime < slow_answered[0]
    summary = json.loads((out / "synthesis_manifest.json").read_text(encoding="utf-8"))
    assert [a["agent"] for a in summary["agents"]] == ["drug", "critic"]  # the order asked for, not finishing order
    assert list(state.result()) == ["drug.llm", "critic.llm", "summary"]


def test_parallel_batches_share_one_budget(prefect_harness, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path / "home"))
    price = {"input": 1000.0, "output": 1000.0, "currency": "USD"}  # about 1 USD a request (~1,000 tokens)
    with FakeOpenAIServer(responder=good_model(), latency_s=0.2) as server:
        params = llm_params(
            server, tmp_path, concurrency=4, parallel_batches=3, prices={"fake-model": price}, budget=8.0
        )
        state = data_synthesis(params=params, return_state=True)
        assert state.is_failed() and "budget" in state.message
        summary = json.loads((tmp_path / "out" / "synthesis_manifest.json").read_text(encoding="utf-8"))
        # the three batches in flight together spent what the one budget allowed, not three budgets' worth, and
        # the manifest records every paid request (those of the batch the budget stopped too) and what is missing
        run = summary["run"]
        assert run["stopped"] and run["paid_requests"] == server.total
        paid = sum(u["prompt_tokens"] + u["completion_tokens"] for u in server.reported_usage) * 1000 / 1e6
        assert run["cost"]["USD"] == pytest.approx(paid) and 0.8 * 8.0 <= paid <= 8.0
        assert run["remaining"]["drug.llm"] == 12 - summary["agents"][0]["accepted"] > 0
        assert summary["agents"][0]["requested"] == 12
        assert 2 <= server.total < 12


def test_agent_choice_offers_every_registered_agent() -> None:
    from medtune_core.synthesis import agent_names

    schema = DataSynthesisParams.model_json_schema()["properties"]["agents"]
    assert schema["items"]["enum"] == ["all", *agent_names()]


def test_pilot_prices_a_few_requests_and_the_run_reuses_them(prefect_harness, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path / "home"))
    price = {"input": 1.0, "output": 2.0, "currency": "USD"}
    with FakeOpenAIServer(responder=good_model()) as server:
        base = {
            "agents": ["drug", "critic"],
            "mode": "llm",
            "num_samples": 10,
            "model": "fake-model",
            "base_url": server.base_url,
            "output_dir": tmp_path / "out",
            "prices": {"fake-model": price},
            "batch_size": 5,
        }
        out = data_synthesis(DataSynthesisParams(**base, pilot=3))
        assert server.total == 6 and set(out) == {"pilot", "projected_cost"}
        report = json.loads(Path(out["pilot"]).read_text(encoding="utf-8"))
        for row in report["agents"]:
            assert row["k"] == 3 and row["total_n"] == 10 and row["priced"]
            expected = (row["input_tokens"] * 1.0 + row["output_tokens"] * 2.0) / 1e6
            assert row["cost"] == pytest.approx(expected, rel=1e-4)
            assert row["projected_cost"] == pytest.approx(row["cost"] / 3 * 10, rel=1e-4)
        assert not list((tmp_path / "out").glob("*_sft_data.jsonl"))  # a pilot writes no data

        full = data_synthesis(DataSynthesisParams(**base))
        assert server.total == 20  # the 6 pilot answers came from the response cache
        assert len(list(DatasetReader(full["drug.llm"], policy="strict"))) == 10
    with pytest.raises(ValueError, match="pilot prices LLM requests"):
        DataSynthesisParams(mode="seed", pilot=2)


def test_bad_prices_and_an_output_dir_that_is_a_file_are_rejected_before_the_flow_starts(tmp_path: Path) -> None:
    from pydantic import ValidationError

    for prices, problem in (
        ({"m": {"input": "cheap"}}, "could not convert"),
        ({"m": {"input": -1.0}}, "finite number >= 0"),
        ({"m": {"input": 1.0, "ouput": 2.0}}, "unknown keys: ['ouput']"),
    ):
        with pytest.raises(ValidationError, match="prices") as err:
            DataSynthesisParams(mode="llm", prices=prices)
        assert problem in str(err.value)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x", encoding="utf-8")
    with pytest.raises(ValidationError, match="output_dir"):
        DataSynthesisParams(output_dir=a_file)
