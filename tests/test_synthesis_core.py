"""Synthesis core (docs/BACKGROUND.md §1): agents, template mode, post-processing, outputs, LLM request building."""

from __future__ import annotations

import inspect
import json
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from medtune_core.dataio import DatasetReader, Manifest
from medtune_core.formats import Conversation
from medtune_core.synthesis import (
    RECOMMENDED_SIZES,
    DedupConfig,
    Sample,
    agent_names,
    build_messages,
    build_request,
    deduplicate,
    estimate_cost,
    generate_seed_samples,
    get_agent,
    postprocess,
    refresh_few_shots,
    run_seed_mode,
    validate_answer,
)
from medtune_core.synthesis import vocab as V
from medtune_core.synthesis.agents.critic import BANDS
from medtune_core.synthesis.base import TEMPLATE_VERSION, canonical_json
from medtune_core.synthesis.postprocess import DuplicateIndex, dedup_text, minhash, shingles
from medtune_core.synthesis.run import batch_ranges, finalize_agent, load_batch, save_batch, seed_batch
from medtune_core.synthesis.templates import template_fingerprint

AGENTS = ["preprocess", "critic", "check_rag", "diagnosis", "drug"]
CJK = ("\u4e00", "\u9fff")


@pytest.fixture(scope="module")
def thousand() -> dict[str, list[Sample]]:
    return {a: generate_seed_samples(a, 1000, seed=0) for a in AGENTS}


def test_registry_has_the_five_agents_in_seed_order() -> None:
    assert agent_names()[:5] == AGENTS
    for name in AGENTS:
        agent = get_agent(name)
        assert agent.system_prompt and agent.output_model and agent.input_model
        assert agent.recommended_sizes == RECOMMENDED_SIZES[name]
        assert len(agent.few_shots()) == agent.num_few_shots


def test_variety_schema_and_quality_at_1000(thousand: dict[str, list[Sample]]) -> None:
    for name, samples in thousand.items():
        agent = get_agent(name)
        outputs = {canonical_json(s.output) for s in samples}
        assert len(outputs) >= 950, f"{name}: only {len(outputs)} distinct outputs of 1000"
        for s in samples[:300]:
            agent.input_model.model_validate(s.input)
            out, failures = agent.validate(s.input, s.output)
            assert out is not None and not failures, f"{name} #{s.index}: {failures}"
        text = json.dumps(samples[0].output, ensure_ascii=False)
        assert sum(CJK[0] <= ch <= CJK[1] for ch in text) > 20, f"{name}: not Chinese text"
        checked = postprocess(name, samples, DedupConfig())
        assert len(checked.accepted) >= 950, f"{name}: {checked.reasons()}"
        assert not [r for r in checked.rejects if not r.reason.startswith("duplicate")]


def test_every_critic_band_is_covered(thousand: dict[str, list[Sample]]) -> None:
    bands = Counter(s.output["band"] for s in thousand["critic"])
    assert set(bands) == set(BANDS)
    assert min(bands.values()) >= 100
    for s in thousand["critic"]:
        lo, hi = BANDS[s.output["band"]]
        assert lo <= s.output["score"] <= hi
        if s.output["score"] <= 2:
            assert any(w in "".join(s.output["issues"]) for w in ("不安全", "风险"))


def test_drug_advice_respects_contraindications(thousand: dict[str, list[Sample]]) -> None:
    avoided = 0
    for s in thousand["drug"]:
        assert "遵医嘱" in json.dumps(s.output, ensure_ascii=False)
        assert s.output["contraindications"]
        for r in s.output["recommendations"]:
            assert not set(V.DRUG_BY_NAME[r["drug"]].contraindications) & set(s.input["history"])
        avoided += len(s.output["not_recommended"])
    assert avoided >= 50  # contraindicated cases are common enough to learn from


def test_diagnosis_lists_differentials_and_red_flags(thousand: dict[str, list[Sample]]) -> None:
    for s in thousand["diagnosis"][:200]:
        names = [d["disease"] for d in s.output["differential_diagnosis"]]
        assert len(set(names)) >= 2 and s.output["preliminary_diagnosis"] not in names
        assert s.output["red_flags"] and s.output["recommended_tests"]


def test_quality_checks_reject_bad_answers() -> None:
    critic = get_agent("critic")
    s = generate_seed_samples("critic", 1, seed=3)[0]
    bad = dict(s.output, score=9, band="较差")
    assert any(f.check == "band" for f in critic.validate(s.input, bad)[1])
    drug = get_agent("drug")
    d = next(x for x in generate_seed_samples("drug", 50, seed=1) if x.output["recommendations"])
    no_orders = json.loads(json.dumps(d.output, ensure_ascii=False).replace("遵医嘱", "听医生的"))
    assert any(f.check == "follow_orders" for f in drug.validate(d.input, no_orders)[1])
    diag = generate_seed_samples("diagnosis", 1, seed=2)[0]
    one_diff = dict(diag.output, differential_diagnosis=diag.output["differential_diagnosis"][:1])
    assert drug.validate(d.input, {"assessment": 1})[1][0].check == "schema"
    assert get_agent("diagnosis").validate(diag.input, one_diff)[1][0].check == "schema"


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    a = run_seed_mode(tmp_path / "a", "all", 40, seed=7)
    b = run_seed_mode(tmp_path / "b", "all", 40, seed=7)
    c = run_seed_mode(tmp_path / "c", ["drug"], 40, seed=8)
    for ra, rb in zip(a, b, strict=True):
        assert Path(ra.path).read_bytes() == Path(rb.path).read_bytes()
    assert Path(a[-1].path).read_bytes() != Path(c[0].path).read_bytes()
    # batching does not change the samples
    batches = [seed_batch("critic", 7, s, n) for s, n in batch_ranges(40, 15)]
    _, report = finalize_agent(tmp_path / "d", "critic", batches, extra={"seed": 7}, dedup=DedupConfig())
    assert Path(report.path).read_bytes() == (tmp_path / "a" / "critic_seed.jsonl").read_bytes()


def test_near_duplicates_are_removed_and_counted(tmp_path: Path) -> None:
    samples = generate_seed_samples("diagnosis", 100, seed=5)
    rng = random.Random(0)
    planted = []
    for i, s in enumerate(samples[:10]):
        out = json.loads(json.dumps(s.output, ensure_ascii=False))
        out["reasoning"] = out["reasoning"].replace("，", "，", 1) + "。"  # a one-character edit
        planted.append(Sample("diagnosis", 1000 + i, dict(s.input), out))
    exact = [Sample("diagnosis", 2000 + i, dict(s.input), dict(s.output)) for i, s in enumerate(samples[10:13])]
    mixed = samples + planted + exact
    rng.shuffle(mixed)
    mixed.sort(key=lambda s: s.index)
    result = deduplicate(mixed, DedupConfig(threshold=0.9))
    assert result.reasons() == {"duplicate:exact": 3, "duplicate:near": 10}
    assert {r.index for r in result.rejects} == {s.index for s in planted + exact}
    # through the writer: counts and the rejects file in the manifest
    batch = seed_batch("diagnosis", 5, 0, 100)
    batch.accepted += planted
    save_batch(tmp_path / "b.jsonl", batch)
    manifest, report = finalize_agent(tmp_path, "diagnosis", [load_batch(tmp_path / "b.jsonl")], dedup=DedupConfig())
    assert report.accepted == 100 and report.reasons == {"duplicate:near": 10}
    assert manifest.rejects == {
        "count": 10,
        "reasons": {"duplicate:near": 10},
        "path": str(tmp_path / "diagnosis_seed.jsonl.rejects.jsonl"),
    }
    rows = [json.loads(x) for x in Path(manifest.rejects["path"]).read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 10 and all(r["reason"] == "duplicate:near" for r in rows)
    # a looser threshold keeps the near copies: each original with a copy at an exact Jaccard of about 0.83 (padded
    # with text of its own) loses the copy at threshold 0.5 and keeps it at 0.97
    for i, s in enumerate(samples[20:30]):
        base = dedup_text(s)
        pad = "".join(chr(0x4E00 + (i * 997 + k * 31) % 20000) for k in range(len(base) // 6))
        copy = Sample("diagnosis", 3000 + i, dict(s.input), dict(s.output, advice=[*s.output["advice"], pad]))
        a, b = set(shingles(base)), set(shingles(dedup_text(copy)))
        assert 0.8 < len(a & b) / len(a | b) < 0.9
        assert deduplicate([s, copy], DedupConfig(threshold=0.5)).reasons() == {"duplicate:near": 1}
        assert deduplicate([s, copy], DedupConfig(threshold=0.97)).reasons() == {}


def test_minhash_shortcuts_give_datasketch_default_values() -> None:
    """The cheaper MinHash (cached permutations, memoised SHA-1 per shingle) equals ``MinHash(num_perm, seed=1)``,
    so dedup decisions and estimated similarities are the same as before."""
    from datasketch import MinHash

    samples = generate_seed_samples("drug", 30, seed=3) + generate_seed_samples("critic", 30, seed=3)
    index = DuplicateIndex(DedupConfig(num_perm=64, ngram=4))
    for s in samples:
        text = dedup_text(s)
        for cfg in (DedupConfig(), DedupConfig(num_perm=64, ngram=4)):
            reference = MinHash(num_perm=cfg.num_perm, seed=1)
            reference.update_batch(shingles(text, cfg.ngram))
            assert (minhash(text, cfg).hashvalues == reference.hashvalues).all()
            assert minhash(text, cfg).jaccard(reference) == 1.0
        assert index.check_and_add(s.id, text) is None
        reference = MinHash(num_perm=64, seed=1)
        reference.update_batch(shingles(text, 4))
        assert (index._hashes[s.id].hashvalues == reference.hashvalues).all()


@pytest.mark.parametrize("fmt", ["instruction", "conversations", "messages"])
def test_written_files_validate_strictly(tmp_path: Path, fmt: str) -> None:
    reports = run_seed_mode(tmp_path, "all", 30, seed=1, output_format=fmt)
    assert [r.agent for r in reports] == AGENTS
    summary = json.loads((tmp_path / "synthesis_manifest.json").read_text(encoding="utf-8"))
    assert [a["agent"] for a in summary["agents"]] == AGENTS
    for r in reports:
        assert Path(r.path).name == f"{r.agent}_seed.jsonl"
        reader = DatasetReader(r.path, policy="strict")
        records = list(reader)
        assert len(records) == r.accepted >= 28
        assert all(isinstance(x, Conversation) for x in records)
        manifest = Manifest.load(r.path)
        assert manifest.is_current() and manifest.rows == r.accepted
        assert manifest.extra["counts"] == {"generated": 30, "accepted": r.accepted, "rejected": r.rejected}
        first = json.loads(Path(r.path).read_text(encoding="utf-8").splitlines()[0])
        if fmt == "instruction":
            assert isinstance(first["input"], dict) and isinstance(first["output"], dict)
            assert first["instruction"] == get_agent(r.agent).system_prompt
        elif fmt == "conversations":
            assert [t["from"] for t in first["conversations"]] == ["human", "gpt"]
            json.loads(first["conversations"][1]["value"])
        else:
            assert [m["role"] for m in first["messages"]] == ["user", "assistant"]


def test_llm_requests_and_answer_validation() -> None:
    for name in AGENTS:
        s = generate_seed_samples(name, 1, seed=11)[0]
        req = build_request(name, s.input, 0)
        roles = [m["role"] for m in req.messages]
        assert roles[0] == "system" and roles[-1] == "user"
        assert roles.count("assistant") == get_agent(name).num_few_shots
        assert json.loads(req.messages[-1]["content"].split("\n", 1)[1]) == s.input
        assert req.json_schema["type"] == "object"
        answer = json.dumps(s.output, ensure_ascii=False)
        assert validate_answer(name, s.input, answer) == (s.output, [])
        assert validate_answer(name, s.input, f"```json\n{answer}\n```")[0] == s.output
        assert validate_answer(name, s.input, "not json")[1][0].check == "schema"
        assert validate_answer(name, s.input, "{}")[1][0].check == "schema"


def test_few_shot_refresh_picks_diverse_samples() -> None:
    samples = generate_seed_samples("preprocess", 60, seed=4)
    samples.insert(1, Sample("preprocess", 999, dict(samples[0].input), dict(samples[0].output)))
    shots = refresh_few_shots("preprocess", samples, k=3)
    assert len(shots) == 3 and len({canonical_json(o) for _, o in shots}) == 3
    agent = get_agent("preprocess")
    before = agent.few_shots()
    try:
        refresh_few_shots("preprocess", samples, k=2, apply=True)
        assert build_messages("preprocess", samples[5].input)[2]["content"] == json.dumps(
            shots[0][1], ensure_ascii=False, separators=(", ", ": ")
        )
    finally:
        agent.set_few_shots(before)


def test_cost_estimate_scales_with_samples() -> None:
    small = {e.agent: e for e in estimate_cost("all", 100, input_price_per_1m=1.0, output_price_per_1m=2.0)}
    big = {e.agent: e for e in estimate_cost(["diagnosis"], 1000, input_price_per_1m=1.0, output_price_per_1m=2.0)}
    assert set(small) == set(AGENTS)
    d = small["diagnosis"]
    assert d.input_tokens > 0 and d.output_tokens > 0
    assert d.cost == pytest.approx(d.input_tokens / 1e6 + 2 * d.output_tokens / 1e6, rel=1e-6)
    assert big["diagnosis"].input_tokens == pytest.approx(10 * d.input_tokens, rel=0.01)
    default = {e.agent: e.samples for e in estimate_cost("all")}
    assert default == {k: v[1] for k, v in RECOMMENDED_SIZES.items()}
    assert estimate_cost(["drug"], 10)[0].cost is None


def test_template_fingerprint_follows_each_agents_source() -> None:
    prints = {name: template_fingerprint(name) for name in ("drug", "critic", "diagnosis")}
    assert len(set(prints.values())) == 3 and all(p.startswith(f"{TEMPLATE_VERSION}-") for p in prints.values())
    assert template_fingerprint("drug") == prints["drug"]
    module = sys.modules[type(get_agent("drug")).__module__]
    assert "drug" in inspect.getsourcefile(module)  # the agent's own module is what is hashed
