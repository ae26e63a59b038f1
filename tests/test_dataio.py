"""Reading and writing safely: path:line errors, skip policy with rejects, atomic writes, manifests, peer files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from medtune_core.dataio import (
    DatasetReader,
    DatasetWriter,
    Manifest,
    atomic_write,
    convert_file,
    manifest_path,
    rejects_path_for,
)
from medtune_core.errors import RecordError
from medtune_core.formats import Conversation, Message

runner = CliRunner()


def _sharegpt_rows(n: int) -> list[str]:
    return [
        json.dumps(
            {"conversations": [{"from": "human", "value": f"问题{i}"}, {"from": "gpt", "value": f"回答{i}"}]},
            ensure_ascii=False,
        )
        for i in range(1, n + 1)
    ]


@pytest.fixture
def broken_line_17(tmp_path: Path) -> Path:
    lines = _sharegpt_rows(30)
    bad = {"conversations": [{"from": "human", "value": "问题17"}, {"from": "gpt", "value": None}]}
    lines[16] = json.dumps(bad, ensure_ascii=False)
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_strict_names_line_and_field(broken_line_17: Path) -> None:
    with pytest.raises(RecordError) as info:
        list(DatasetReader(broken_line_17))
    assert str(info.value) == f"{broken_line_17}:17: conversations[1].value: missing or null"


def test_strict_convert_writes_nothing(broken_line_17: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "sft.messages.jsonl"
    with pytest.raises(RecordError, match=":17: "):
        convert_file(broken_line_17, out, "messages")
    assert not out.exists() and not manifest_path(out).exists()
    assert list(out.parent.iterdir()) == []  # no temp file left behind either


def test_skip_keeps_every_good_row_and_lists_the_bad_one(broken_line_17: Path, tmp_path: Path) -> None:
    out = tmp_path / "sft.messages.jsonl"
    manifest = convert_file(broken_line_17, out, "messages", policy="skip")
    assert manifest.rows == 29
    assert len(out.read_text(encoding="utf-8").splitlines()) == 29
    rejects = [json.loads(x) for x in rejects_path_for(out).read_text(encoding="utf-8").splitlines()]
    assert [(r["line"], r["field"], r["problem"]) for r in rejects] == [
        (17, "conversations[1].value", "missing or null")
    ]
    assert "问题17" in rejects[0]["raw"]  # the original row is kept, nothing lost
    assert manifest.rejects == {"count": 1, "path": str(rejects_path_for(out))}
    assert Manifest.load(out) == manifest and manifest.is_current()


@pytest.mark.parametrize(
    ("content", "field", "problem"),
    [
        (b'{"text": "ok"}\n{"text": "bad"\n', "<json>", "invalid JSON"),
        (b'{"text": "ok"}\n{"text": "\xff\xfe bad"}\n', "<encoding>", "not valid UTF-8"),
        (b'{"text": "ok"}\n{"text": 5}\n', "text", "expected a string, got int"),
        (b'{"text": "ok"}\n{"text": ""}\n', "text", "empty content"),
        (b'{"text": "ok"}\n["not", "an", "object"]\n', "<row>", "expected a JSON object"),
    ],
)
def test_problems_are_reported_on_line_2(tmp_path: Path, content: bytes, field: str, problem: str) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(content)
    with pytest.raises(RecordError) as info:
        list(DatasetReader(path))
    assert (info.value.line, info.value.field) == (2, field)
    assert problem in info.value.problem
    reader = DatasetReader(path, policy="skip")
    assert len(list(reader)) == 1 and reader.stats.rejected == 1


def test_bom_is_reported_in_strict_and_tolerated_in_skip(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n')
    with pytest.raises(RecordError, match=r":1: <encoding>: file starts with a UTF-8 byte-order mark"):
        list(DatasetReader(path, "text"))
    reader = DatasetReader(path, "text", policy="skip")
    assert [d.text for d in reader] == ["a"] and reader.stats.warnings


def test_interrupted_write_leaves_no_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "data.jsonl"

    def records():
        yield Conversation([Message("user", "q"), Message("assistant", "a")])
        raise KeyboardInterrupt  # the process is interrupted half way

    with pytest.raises(KeyboardInterrupt), DatasetWriter(out, "sharegpt") as writer:
        writer.write_all(records())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), atomic_write(out) as fh:
        fh.write("half")
        raise RuntimeError("crash")
    assert not out.exists()


def test_reader_streams_without_loading_the_file(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(_sharegpt_rows(5000)) + "\n", encoding="utf-8")
    it = iter(DatasetReader(path))
    first = next(it)
    assert first.messages[0].content == "问题1"


PEER_EXPECTED = {
    "medicalgpt/medical_sft_1K_format.jsonl": (1000, "sharegpt"),
    "medicalgpt/dpo_zh_500.jsonl": (500, "preference_sharegpt"),
    "medicalgpt/grpo_sample.jsonl": (32, "qa"),
    "medicalgpt/medical_corpus.txt": (87, "qa_zh"),
}


@pytest.mark.parametrize("name", sorted(PEER_EXPECTED))
def test_peer_files_validate_unchanged(peer_dir: Path, name: str) -> None:
    result = runner.invoke(app, ["validate", str(peer_dir / name)])
    rows, fmt = PEER_EXPECTED[name]
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{peer_dir / name}: {rows} rows, format {fmt}"


def test_peer_cmmlu_dev_is_45_questions_in_9_subjects(peer_dir: Path) -> None:
    files = sorted((peer_dir / "cmmlu_dev").glob("*.csv"))
    questions = [q for f in files for q in DatasetReader(f)]
    assert len(questions) == 45
    assert len({q.subject for q in questions}) == 9
    assert all(q.answer in q.options for q in questions)


def test_cli_validate_and_convert(broken_line_17: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(broken_line_17)])
    assert result.exit_code == 1
    assert f"{broken_line_17}:17: conversations[1].value: missing or null" in result.output
    rejects = tmp_path / "rejects.jsonl"
    result = runner.invoke(app, ["validate", str(broken_line_17), "--policy", "skip", "--rejects", str(rejects)])
    assert result.exit_code == 0
    assert f"{broken_line_17}: 29 rows, format sharegpt, 1 rejected" in result.output
    assert json.loads(rejects.read_text(encoding="utf-8"))["line"] == 17
    out = tmp_path / "ok.alpaca.jsonl"
    result = runner.invoke(app, ["convert", str(broken_line_17), str(out), "--to", "alpaca", "--policy", "skip"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text(encoding="utf-8").splitlines()[0]) == {
        "instruction": "问题1",
        "input": "",
        "output": "回答1",
    }
