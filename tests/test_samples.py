"""The packaged sample data: every file reads cleanly in its indexed format and holds what the index says."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter

import pytest

from medtune_core.dataio import DatasetReader
from medtune_core.errors import MedtuneError
from medtune_core.formats import Conversation, MultipleChoice, get_format
from medtune_core.samples import SAMPLES, sample_path, samples_dir

MCQ = [name for name, info in SAMPLES.items() if info.kind == "mcq"]
MEDQA = [name for name, info in SAMPLES.items() if info.format == "medqa"]
BENCHMARK = [name for name in SAMPLES if name.startswith("benchmark_")]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_reads_strictly_with_indexed_format_and_count(name: str) -> None:
    info = SAMPLES[name]
    reader = DatasetReader(sample_path(name), policy="strict")
    records = list(reader)
    assert reader.format.name == info.format
    assert get_format(info.format).kind == info.kind
    assert len(records) == info.rows
    assert reader.stats.rejected == 0
    assert all(r.kind == info.kind for r in records)


def test_every_data_file_is_indexed() -> None:
    indexed = {info.path for info in SAMPLES.values()}
    on_disk = {
        p.relative_to(samples_dir()).as_posix()
        for p in samples_dir().rglob("*")
        if p.is_file() and p.suffix in {".jsonl", ".csv", ".txt"}
    }
    assert on_disk == indexed


def test_sample_path_unknown_name() -> None:
    with pytest.raises(MedtuneError, match="unknown sample"):
        sample_path("no_such_sample")


def _raw_rows(name: str) -> list[dict]:
    with open(sample_path(name), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.mark.parametrize("name", MEDQA)
def test_medqa_answer_text_equals_its_option(name: str) -> None:
    for row in _raw_rows(name):
        options = row["options"]
        if isinstance(options, list):
            options = {o["key"]: o["value"] for o in options}
        assert row["answer"] == options[row["answer_idx"]]
        assert len(set(options.values())) == len(options), "duplicate option text"
        assert row["meta_info"]


@pytest.mark.parametrize("name", MCQ)
def test_answer_letters_are_spread(name: str) -> None:
    records = [r for r in DatasetReader(sample_path(name)) if isinstance(r, MultipleChoice)]
    counts = Counter(r.answer for r in records)
    assert max(counts.values()) / len(records) <= 0.35, counts
    letters = set(records[0].options)
    assert len(counts) >= len(letters) - 1


def test_benchmark_explanations_filled() -> None:
    for name in BENCHMARK:
        if name == "benchmark_cmmlu_anatomy":
            continue
        assert all(r.explanation for r in DatasetReader(sample_path(name)))


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"[\s\W_]+", "", text)


def test_pool_holds_no_copy_of_a_benchmark_question() -> None:
    questions, explanations = set(), set()
    for name in BENCHMARK:
        for r in DatasetReader(sample_path(name)):
            questions.add(_norm(r.question))
            if r.explanation:
                explanations.add(_norm(r.explanation))
    for pool in ("pool_zh", "pool_en"):
        for record in DatasetReader(sample_path(pool)):
            assert isinstance(record, Conversation)
            for m in record.turns:
                assert _norm(m.content) not in questions
                assert _norm(m.content) not in explanations


@pytest.mark.parametrize("pool", ["pool_zh", "pool_en"])
def test_pool_is_about_half_benchmark_related(pool: str) -> None:
    categories = Counter(row["category"] for row in _raw_rows(pool))
    share = categories["benchmark_related"] / sum(categories.values())
    assert set(categories) == {"benchmark_related", "general"}
    assert 0.4 <= share <= 0.6


def test_reasoning_and_redteam_layout() -> None:
    risks = Counter()
    for name in ("reasoning_zh", "redteam_zh"):
        for row in _raw_rows(name):
            assert re.match(r"^<think>.+</think>\n\S", row["output"], re.S)
            meta = row["meta"]
            assert meta["risk_level"] in {"low", "medium", "high"}
            assert meta["is_deidentified"] is True
            assert {"source", "specialty", "complexity", "lang_style"} <= meta.keys()
            if name == "redteam_zh":
                assert meta["risk_level"] == "high"
                assert re.search("120|急诊|急救|热线", row["output"].split("</think>")[1])
            else:
                risks[meta["risk_level"]] += 1
    assert risks["high"] >= 10


def test_alpaca_sample_has_structured_json_rows() -> None:
    structured = [
        r for r in _raw_rows("sft_alpaca_zh") if isinstance(r["input"], dict) and isinstance(r["output"], dict)
    ]
    assert len(structured) >= 6


def test_sharegpt_sample_has_multi_turn_and_system_rows() -> None:
    rows = _raw_rows("sft_sharegpt_zh")
    assert sum(len(r["conversations"]) > 2 for r in rows) >= 5
    assert sum(bool(r.get("system_prompt")) for r in rows) >= 4


def test_pretrain_txt_has_no_blank_lines() -> None:
    lines = sample_path("pretrain_zh_txt").read_text(encoding="utf-8").splitlines()
    assert lines and all(line.strip() for line in lines)
