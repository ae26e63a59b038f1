"""Bailian inputs: language read from the text, decimal part limit, duplicate option keys, ``answer`` without
``answer_idx``, stale temporary files, the user's umask, rows over ``max_length`` in ``estimate``, the minimum
row count, and a streamed upload whose memory does not grow with the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli_bailian import app as bailian_cli
from medtune_core.bailian import (
    DEFAULT_MAX_BYTES,
    MIN_TRAINING_ROWS,
    convert_medqa_file,
    convert_medqa_tree,
    detect_language,
    max_part_bytes,
    split_file,
    too_few_rows,
)
from medtune_core.errors import MedtuneError, RecordError
from tests.fakes.dashscope_server import FakeDashScope

ZH = {
    "question": "男，45岁。头痛3天，伴恶心。最可能的诊断是",
    "options": {"A": "偏头痛", "B": "紧张性头痛", "C": "蛛网膜下腔出血", "D": "脑膜炎"},
    "answer": "蛛网膜下腔出血",
    "answer_idx": "C",
}
EN = {
    "question": "A 23-year-old woman presents with fever after a trip. Which is the most likely diagnosis?",
    "options": {"A": "Influenza", "B": "Malaria", "C": "Dengue", "D": "Typhoid"},
    "answer": "Malaria",
    "answer_idx": "B",
}
KEY = "sk-inputs-test-0123456789"
REPO = Path(__file__).resolve().parent.parent


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def messages(path: Path) -> list[list[dict]]:
    return [json.loads(x)["messages"] for x in path.read_text(encoding="utf-8").splitlines()]


def test_language_auto_reads_the_text(tmp_path):
    en = write_jsonl(tmp_path / "Mainland" / "cases.jsonl", [EN])  # English under a Chinese-sounding folder
    zh = write_jsonl(tmp_path / "US" / "train.jsonl", [{**ZH, "question": ZH["question"] + "（CT 示低密度灶，10 mg）"}])
    assert detect_language(en) == "en" and detect_language(zh) == "zh"
    m = convert_medqa_file(en, tmp_path / "out" / "en.jsonl", language="auto")
    assert m.extra["language"] == "en" and m.extra["language_from"] == "auto"
    assert messages(tmp_path / "out" / "en.jsonl")[0][2]["content"] == "The answer is B. Malaria"
    convert_medqa_file(zh, tmp_path / "out" / "zh.jsonl", language="auto")
    assert messages(tmp_path / "out" / "zh.jsonl")[0][2]["content"] == "答案是 C. 蛛网膜下腔出血"
    convert_medqa_file(en, tmp_path / "out" / "forced.jsonl", language="zh")  # asked for: not second-guessed
    assert messages(tmp_path / "out" / "forced.jsonl")[0][2]["content"] == "答案是 B. Malaria"
    with pytest.raises(MedtuneError, match="unknown language 'fr'"):
        convert_medqa_file(en, tmp_path / "out" / "x.jsonl", language="fr")  # type: ignore[arg-type]
    # a tree: an English file in the Taiwan folder gets the English prompt
    write_jsonl(tmp_path / "MedQA/questions/Taiwan/train.jsonl", [EN])
    (tw,) = convert_medqa_tree(tmp_path / "MedQA", tmp_path / "tree")
    assert tw.extra["language"] == "en"


def test_part_limit_is_decimal_with_a_margin(tmp_path):
    assert DEFAULT_MAX_BYTES == 294_000_000 < 300 * 10**6 < 300 * 2**20
    assert max_part_bytes(300) == DEFAULT_MAX_BYTES and max_part_bytes(1) == 1_000_000
    with pytest.raises(MedtuneError):
        max_part_bytes(0)
    line = json.dumps({"messages": [{"role": "user", "content": "q" * 80}, {"role": "assistant", "content": "a"}]})
    src = tmp_path / "big.jsonl"
    src.write_text((line + "\n") * 30, encoding="utf-8")  # 30 lines of ~130 bytes
    parts = split_file(src, tmp_path / "parts", max_bytes=max_part_bytes(0.001))
    assert all(p.bytes <= 1000 for p in parts) and sum(p.rows for p in parts) == 30


def test_duplicate_option_keys_are_rejected_with_file_and_line(tmp_path):
    listed = {**EN, "options": [{"key": "A", "value": "x"}, {"key": "a", "value": "Malaria"}]}
    src = write_jsonl(tmp_path / "list.jsonl", [EN, listed])
    with pytest.raises(RecordError, match=r"list\.jsonl:2: options\[1\]\.key: duplicate option key 'A'"):
        convert_medqa_file(src, tmp_path / "out.jsonl")
    raw = tmp_path / "object.jsonl"  # JSON keeps the last of two equal keys: caught before it can
    raw.write_text(
        json.dumps(EN) + "\n" + '{"question": "q?", "options": {"A": "x", "B": "M", "A": "y"}, "answer_idx": "B"}\n',
        encoding="utf-8",
    )
    with pytest.raises(RecordError, match=r"object\.jsonl:2: <json>: duplicate key 'A'"):
        convert_medqa_file(raw, tmp_path / "out.jsonl")
    m = convert_medqa_file(raw, tmp_path / "skip.jsonl", policy="skip")
    assert m.rows == 1 and m.rejects["count"] == 1


def test_answer_without_answer_idx_is_accepted_when_unambiguous(tmp_path):
    no_idx = {k: v for k, v in EN.items() if k != "answer_idx"}
    src = write_jsonl(tmp_path / "in.jsonl", [no_idx])
    convert_medqa_file(src, tmp_path / "out.jsonl", language="en")
    assert messages(tmp_path / "out.jsonl")[0][2]["content"] == "The answer is B. Malaria"
    twice = {**no_idx, "options": {"A": "Malaria", "B": "Malaria", "C": "Dengue"}}
    nowhere = {**no_idx, "answer": "Cholera"}
    for row, why in ((twice, "matches options A, B"), (nowhere, "matches no option")):
        bad = write_jsonl(tmp_path / "bad.jsonl", [row])
        with pytest.raises(RecordError, match=rf"bad\.jsonl:1: answer_idx: missing, and answer .* {why}"):
            convert_medqa_file(bad, tmp_path / "bad.out.jsonl")


def test_stale_temp_files_are_removed_and_outputs_follow_the_umask(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [ZH] * 3)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".train.jsonl.k1ll3d.tmp"  # what a kill -9 during a write leaves
    live = out / ".train.jsonl.wr1t1ng.tmp"  # another writer, still busy
    stale_part = out / "parts" / ".train.part001.jsonl.x9.tmp"
    for p in (stale, live, stale_part):
        p.parent.mkdir(exist_ok=True)
        p.write_text("half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(stale_part, (old, old))
    mask = os.umask(0o022)
    try:
        convert_medqa_file(src, out / "train.jsonl")
        split_file(out / "train.jsonl", out / "parts", max_bytes=900)
    finally:
        os.umask(mask)
    assert not stale.exists() and not stale_part.exists() and live.exists()
    assert (out / "train.jsonl").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert (out / "parts" / "train.part001.jsonl").stat().st_mode & 0o777 == 0o644
    mask = os.umask(0o077)
    try:
        convert_medqa_file(src, out / "private.jsonl")
    finally:
        os.umask(mask)
    assert (out / "private.jsonl").stat().st_mode & 0o777 == 0o600


def test_estimate_reports_rows_over_max_length(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [ZH, {**ZH, "question": ZH["question"] + "。" * 200}])
    convert_medqa_file(src, tmp_path / "train.jsonl")
    result = CliRunner().invoke(bailian_cli, ["estimate", str(tmp_path / "train.jsonl"), "--max-length", "120"])
    assert result.exit_code == 0, result.output
    assert "2 rows," in result.output and "1 rows over max_length 120" in result.output
    assert "warning: 1 rows longer than max_length 120 will be truncated" in result.output


def test_minimum_row_count():
    assert MIN_TRAINING_ROWS == 1000
    assert too_few_rows(1000) is None
    assert "only 999 training rows" in too_few_rows(999)
    assert too_few_rows(5, minimum=5) is None


UPLOAD_PEAK = textwrap.dedent(
    """
    import sys, tracemalloc
    from medtune_core.bailian import BailianClient
    client = BailianClient(base_url=sys.argv[1], registry_path=sys.argv[2])
    client.list_files()  # imports and connections set up before measuring
    tracemalloc.start()
    client.upload(sys.argv[3])
    print(tracemalloc.get_traced_memory()[1] / 1e6)
    """
)


def test_streamed_upload_memory_does_not_grow_with_the_file(tmp_path):
    line = json.dumps({"messages": [{"role": "user", "content": "q" * 4000}, {"role": "assistant", "content": "a"}]})
    big = tmp_path / "big.jsonl"
    with big.open("w", encoding="utf-8") as fh:
        for _ in range(6000):  # ~24 MB
            fh.write(line + "\n")
    with FakeDashScope(api_key=KEY, keep_contents=False) as server:
        out = subprocess.run(
            [sys.executable, "-c", UPLOAD_PEAK, server.base_url, str(tmp_path / "r.json"), str(big)],
            cwd=REPO,
            env={**os.environ, "DASHSCOPE_API_KEY": KEY},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert len(server.files) == 1 and next(iter(server.files.values()))["size"] == big.stat().st_size
    # the SDK's Files.upload peaks at about twice the file (52 MB here): the body is built in memory
    peak_mb = float(out.stdout.strip().splitlines()[-1])
    assert peak_mb < 8, f"upload of a {big.stat().st_size / 1e6:.0f} MB file allocated {peak_mb:.1f} MB at peak"
