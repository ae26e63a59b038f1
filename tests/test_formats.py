"""Record formats: round trips through the canonical form, auto-detection, cross-kind conversion."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from medtune_core.dataio import DatasetReader, convert_file, detect_format, write_records
from medtune_core.errors import FieldError, MedtuneError
from medtune_core.formats import FORMATS, Conversation, RecordKind, get_format, to_kind

ROWS: dict[str, list] = {
    "alpaca": [
        {"instruction": "高血压患者饮食要注意什么？", "input": "", "output": "低盐低脂，控制体重，戒烟限酒。"},
        {
            "instruction": "把症状表整理成结构化描述",
            "input": {"部位": "头部", "主要症状": ["头痛", "头晕"], "严重程度": 3, "持续时间": "1To3Days"},
            "output": {"描述": "头痛伴头晕 1-3 天，中度", "建议科室": "神经内科"},
        },
        {
            "instruction": "Then what dose?",
            "input": "adult, 70 kg",
            "output": "Follow the label; ask a pharmacist.",
            "system": "You are a careful assistant.",
            "history": [["Is ibuprofen OK for a headache?", "Usually yes, if you have no ulcer."]],
            "meta": {"source": "hand"},
        },
        {"instruction": "没有 input 字段的行", "output": "照样保留。"},
    ],
    "sharegpt": [
        {
            "conversations": [
                {"from": "human", "value": "发烧怎么办？"},
                {"from": "gpt", "value": "多喝水，超过 39℃ 就医。"},
            ]
        },
        {
            "conversations": [
                {"from": "human", "value": "What is HbA1c?"},
                {"from": "gpt", "value": "Average glucose over ~3 months."},
                {"from": "human", "value": "Target?"},
                {"from": "gpt", "value": "Often below 7% for adults with diabetes."},
            ],
            "system_prompt": "You are a doctor.",
            "id": 7,
        },
        {
            "conversations": [
                {"from": "system", "value": "你是医生"},
                {"from": "human", "value": "咳嗽"},
                {"from": "gpt", "value": "多久了？"},
            ]
        },
    ],
    "messages": [
        {
            "messages": [
                {"role": "system", "content": "你是医学助手"},
                {"role": "user", "content": "胃痛"},
                {"role": "assistant", "content": "请描述疼痛部位。"},
            ]
        },
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "split": "train"},
    ],
    "qa": [{"question": "糖尿病的典型症状？", "answer": "三多一少"}],
    "qa_zh": [{"问": "感冒要吃抗生素吗？", "答": "病毒性感冒一般不需要。"}],
    "preference": [
        {"prompt": "头痛能吃布洛芬吗？", "chosen": "一般可以，注意胃病史。", "rejected": "随便吃。"},
        {"prompt": "Dose?", "chosen": "Per label.", "rejected": "Double it.", "system": "Be safe."},
        {
            "prompt": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
            ],
            "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        },
    ],
    "preference_sharegpt": [
        {"conversations": [{"from": "human", "value": "失眠怎么办"}], "chosen": "规律作息。", "rejected": "喝酒助眠。"}
    ],
    "preference_medical": [
        {"question": "孕妇感冒", "response_chosen": "先咨询医生。", "response_rejected": "吃点抗生素。"}
    ],
    "text": [{"text": "高血压是最常见的慢性病之一。"}, {"text": "Insulin lowers blood glucose.", "source": "en"}],
    "medqa": [
        {
            "question": "Which vitamin deficiency causes scurvy?",
            "options": {"A": "Vitamin A", "B": "Vitamin B12", "C": "Vitamin C", "D": "Vitamin D", "E": "Vitamin K"},
            "answer": "Vitamin C",
            "answer_idx": "C",
            "meta_info": "step1",
        },
        {
            "question": "缺铁性贫血的典型表现是",
            "options": [{"key": "A", "value": "小细胞低色素"}, {"key": "B", "value": "大细胞"}],
            "answer": "小细胞低色素",
            "answer_idx": "A",
        },
    ],
    "ceval": [
        {
            "id": "1",
            "question": "正常成人血红蛋白",
            "A": "120-160 g/L",
            "B": "50 g/L",
            "C": "300 g/L",
            "D": "10 g/L",
            "answer": "A",
        }
    ],
}


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(ROWS))
def test_round_trip_is_lossless(name: str) -> None:
    fmt = get_format(name)
    for row in ROWS[name]:
        assert fmt.dump(fmt.parse(row)) == row


@pytest.mark.parametrize("name", sorted(ROWS))
def test_auto_detection(name: str, tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / f"{name}.jsonl", ROWS[name])
    assert detect_format(path).name == name


def test_every_registered_format_is_covered() -> None:
    assert set(FORMATS) == set(ROWS) | {"txt", "mcq_csv"}


def test_txt_and_csv_round_trip(tmp_path: Path) -> None:
    txt = tmp_path / "corpus.txt"
    txt.write_text("第一篇文档。\n\n第二篇文档。\n", encoding="utf-8")
    reader = DatasetReader(txt)
    docs = list(reader)
    assert reader.format.name == "txt" and [d.text for d in docs] == ["第一篇文档。", "第二篇文档。"]
    assert reader.stats.blank_lines == 1
    out = write_records(tmp_path / "copy.txt", docs, "txt")
    assert Path(out.path).read_text(encoding="utf-8") == "第一篇文档。\n第二篇文档。\n"

    src = tmp_path / "physician_val.csv"
    with src.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "question", "A", "B", "C", "D", "answer", "explanation"])
        w.writerow(["0", "心脏有几个腔？\n（单选）", "2", "3", "4", "5", "C", "两房两室"])
    (mcq,) = list(DatasetReader(src))
    assert mcq.subject == "physician" and mcq.answer == "C" and mcq.question.endswith("（单选）")
    manifest = write_records(tmp_path / "copy_val.csv", [mcq], "mcq_csv")
    assert Path(manifest.path).read_text(encoding="utf-8") == src.read_text(encoding="utf-8")


def _cross_format_form(row: dict) -> dict:
    """What a row looks like after a trip through another chat format (same messages, canonical layout)."""
    if isinstance(row.get("input"), str) and row["input"]:
        return {**row, "instruction": f"{row['instruction']}\n{row['input']}", "input": ""}
    if "instruction" in row:
        return {**row, "input": row.get("input", "")}
    turns = row.get("conversations")
    if turns and turns[0]["from"] == "system":  # ShareGPT's two places for a system prompt are equivalent
        return {"conversations": turns[1:], "system_prompt": turns[0]["value"]}
    return row


@pytest.mark.parametrize("target", ["sharegpt", "messages", "alpaca"])
def test_cross_format_conversion_keeps_messages(target: str, tmp_path: Path) -> None:
    for source in ("alpaca", "sharegpt", "messages", "qa", "qa_zh"):
        src = _write_jsonl(tmp_path / f"{source}.jsonl", ROWS[source])
        dst = tmp_path / f"{source}-to-{target}.jsonl"
        manifest = convert_file(src, dst, target)
        assert manifest.rows == len(ROWS[source])
        before = [c.messages for c in DatasetReader(src)]
        after = [c.messages for c in DatasetReader(dst)]
        assert after == before, (source, target)
        # and back: the original rows come back exactly, except that a chat format has no place for alpaca's
        # split of a plain-text input from its instruction (JSON-object inputs and outputs do come back).
        back = tmp_path / f"{source}-back.jsonl"
        convert_file(dst, back, source)
        expected = ROWS[source] if target == source else [_cross_format_form(r) for r in ROWS[source]]
        assert [json.loads(x) for x in back.read_text(encoding="utf-8").splitlines()] == expected


def test_preference_shapes_convert_into_each_other(tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "p.jsonl", ROWS["preference_medical"])
    for target in ("preference", "preference_sharegpt", "preference_medical"):
        dst = tmp_path / f"{target}.jsonl"
        convert_file(src, dst, target)
        (pair,) = list(DatasetReader(dst))
        assert (pair.prompt[-1].content, pair.chosen, pair.rejected) == ("孕妇感冒", "先咨询医生。", "吃点抗生素。")


def test_cross_kind_conversions() -> None:
    mcq = get_format("medqa").parse(ROWS["medqa"][0])
    conv = to_kind(mcq, RecordKind.CHAT)
    assert isinstance(conv, Conversation)
    assert conv.messages[-1].content == "答案是 C. Vitamin C"
    assert "选项：\nA. Vitamin A\nB. Vitamin B12" in conv.messages[1].content
    pair = get_format("preference").parse(ROWS["preference"][0])
    assert to_kind(pair, RecordKind.CHAT).messages[-1].content == "一般可以，注意胃病史。"
    text = get_format("text").parse(ROWS["text"][0])
    with pytest.raises(MedtuneError, match="cannot convert text records to chat"):
        to_kind(text, RecordKind.CHAT)


@pytest.mark.parametrize(
    ("fmt", "row", "field", "problem"),
    [
        ("alpaca", {"instruction": None, "output": "x"}, "instruction", "missing or null"),
        ("alpaca", {"instruction": "q", "output": 3}, "output", "expected a string, got int"),
        ("alpaca", {"instruction": "  ", "output": "x"}, "instruction", "empty content"),
        (
            "sharegpt",
            {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
            "conversations[0].role",
            "roles out of order",
        ),
        ("sharegpt", {"conversations": [{"from": "bot", "value": "a"}]}, "conversations[0].from", "unknown speaker"),
        ("messages", {"messages": [{"role": "user", "content": "q"}]}, "messages", "last turn must be the assistant"),
        ("messages", {"messages": [{"role": "user", "content": None}]}, "messages[0].content", "missing or null"),
        ("preference", {"prompt": "q", "chosen": "", "rejected": "r"}, "chosen", "empty content"),
        (
            "medqa",
            {"question": "q", "options": {"A": "x", "B": "y"}, "answer": "y", "answer_idx": "A"},
            "answer",
            "does not match option A",
        ),
        (
            "medqa",
            {"question": "q", "options": {"A": "x", "B": "y"}, "answer_idx": "E"},
            "answer_idx",
            "not one of the options",
        ),
    ],
)
def test_field_errors_name_the_field(fmt: str, row: dict, field: str, problem: str) -> None:
    with pytest.raises(FieldError) as info:
        get_format(fmt).parse(row)
    assert info.value.field == field
    assert problem in info.value.problem
