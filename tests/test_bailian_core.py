"""Bailian core: converter text, checks, tree conversion, split, tokens and cost, and the client driving
the real ``dashscope`` SDK against a local fake server."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from medtune_core.bailian import (
    BailianClient,
    BailianError,
    BailianJobFailed,
    BailianPrompts,
    BailianTimeout,
    CostCeilingExceeded,
    HyperParameters,
    JobSpec,
    RetryPolicy,
    TokenCounter,
    check_cost_ceiling,
    convert_medqa_file,
    convert_medqa_tree,
    count_file_tokens,
    estimate_cost,
    naive_count_file,
    split_file,
    validate_bailian_file,
)
from medtune_core.dataio import Manifest
from medtune_core.errors import MedtuneError, RecordError

try:
    from tests.fakes.dashscope_server import FakeDashScope
except ImportError:  # pytest run without the checkout on sys.path: tests/ itself is
    from fakes.dashscope_server import FakeDashScope  # type: ignore[no-redef]

ZH_SYSTEM = "你是一名专业的医学助手，擅长回答医学选择题。请根据题目和选项给出正确答案。"
EN_SYSTEM = (
    "You are a professional medical assistant, good at medical multiple-choice questions. "
    "Give the correct answer from the question and options."
)
ZH_ROW = {
    "question": "男，45岁。头痛3天，伴恶心。最可能的诊断是",
    "options": {"A": "偏头痛", "B": "紧张性头痛", "C": "蛛网膜下腔出血", "D": "脑膜炎"},
    "answer": "蛛网膜下腔出血",
    "answer_idx": "C",
    "meta_info": "卫生部",
}
EN_ROW = {
    "question": "A 23-year-old woman presents with fever. Which is the most likely diagnosis?",
    "options": [
        {"key": "A", "value": "Influenza"},
        {"key": "B", "value": "Malaria"},
        {"key": "C", "value": "Dengue"},
        {"key": "D", "value": "Typhoid"},
        {"key": "E", "value": "Measles"},
    ],
    "answer": "Malaria",
    "answer_idx": "B",
    "meta_info": "step1",
}
KEY = "sk-fake-secret-0123456789abcdef"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------------ converter


def test_converter_exact_chinese_text(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [ZH_ROW])
    manifest = convert_medqa_file(src, tmp_path / "out.jsonl")
    line = (tmp_path / "out.jsonl").read_text(encoding="utf-8")
    expected = {
        "messages": [
            {"role": "system", "content": ZH_SYSTEM},
            {
                "role": "user",
                "content": "男，45岁。头痛3天，伴恶心。最可能的诊断是\n\n选项：\n"
                "A. 偏头痛\nB. 紧张性头痛\nC. 蛛网膜下腔出血\nD. 脑膜炎",
            },
            {"role": "assistant", "content": "答案是 C. 蛛网膜下腔出血"},
        ]
    }
    assert line == json.dumps(expected, ensure_ascii=False) + "\n"  # nothing else: no meta_info, no subject
    assert manifest.rows == 1 and manifest.format == "messages"
    assert manifest.extra["language"] == "zh"
    assert Manifest.load(tmp_path / "out.jsonl").sha256 == manifest.sha256


def test_converter_english_and_key_value_options(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [EN_ROW])
    convert_medqa_file(src, tmp_path / "out.jsonl", language="en")
    (row,) = read_jsonl(tmp_path / "out.jsonl")
    assert row["messages"] == [
        {"role": "system", "content": EN_SYSTEM},
        {
            "role": "user",
            "content": "A 23-year-old woman presents with fever. Which is the most likely diagnosis?\n\nOptions:\n"
            "A. Influenza\nB. Malaria\nC. Dengue\nD. Typhoid\nE. Measles",
        },
        {"role": "assistant", "content": "The answer is B. Malaria"},
    ]


def test_converter_custom_system_prompt(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [ZH_ROW])
    prompts = BailianPrompts().with_system("你是医生。")
    convert_medqa_file(src, tmp_path / "out.jsonl", prompts=prompts)
    assert read_jsonl(tmp_path / "out.jsonl")[0]["messages"][0] == {"role": "system", "content": "你是医生。"}


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"answer": "偏头痛"}, "answer: '偏头痛' does not match option C"),
        ({"answer_idx": "F"}, "answer_idx: 'F' is not one of the options"),
        ({"question": "  "}, "question: empty content"),
        ({"options": {"A": "x", "B": ""}}, "options.B: empty content"),
    ],
)
def test_converter_reports_bad_rows_with_path_and_line(tmp_path, change, where):
    src = write_jsonl(tmp_path / "in.jsonl", [ZH_ROW, {**ZH_ROW, **change}, ZH_ROW])
    out = tmp_path / "out.jsonl"
    with pytest.raises(RecordError) as err:
        convert_medqa_file(src, out)
    assert str(err.value).startswith(f"{src}:2: ")
    assert where in str(err.value)
    assert not out.exists()  # strict: nothing half-written


def test_converter_skip_policy_keeps_rejects(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [ZH_ROW, {**ZH_ROW, "answer": "脑膜炎"}, ZH_ROW])
    manifest = convert_medqa_file(src, tmp_path / "out.jsonl", policy="skip")
    assert manifest.rows == 2
    assert manifest.rejects["count"] == 1
    (reject,) = read_jsonl(Path(manifest.rejects["path"]))
    assert reject["line"] == 2 and reject["field"] == "answer"


def make_medqa_tree(root: Path) -> Path:
    q = root / "questions"
    write_jsonl(q / "Mainland/4_options/phrases_no_exclude_train.jsonl", [ZH_ROW, ZH_ROW])
    write_jsonl(q / "Mainland/4_options/phrases_no_exclude_dev.jsonl", [ZH_ROW])
    write_jsonl(q / "Taiwan/test.jsonl", [ZH_ROW])
    four = {**EN_ROW, "options": EN_ROW["options"][:4]}
    write_jsonl(q / "US/4_options/phrases_no_exclude_train.jsonl", [four])
    write_jsonl(q / "US/4_options/phrases_no_exclude_test.jsonl", [four])
    write_jsonl(q / "US/train.jsonl", [EN_ROW, EN_ROW, EN_ROW])
    return root


def test_tree_conversion_output_names_and_languages(tmp_path):
    root = make_medqa_tree(tmp_path / "MedQA")
    manifests = convert_medqa_tree(root, tmp_path / "out")
    names = sorted(Path(m.path).name for m in manifests)
    assert names == [
        "mainland_4opt_dev.jsonl",
        "mainland_4opt_train.jsonl",
        "taiwan_test.jsonl",
        "us_4opt_test.jsonl",
        "us_4opt_train.jsonl",
        "us_5opt_train.jsonl",
    ]
    by_name = {Path(m.path).name: m for m in manifests}
    assert by_name["us_5opt_train.jsonl"].rows == 3
    assert by_name["us_5opt_train.jsonl"].extra["language"] == "en"
    assert by_name["taiwan_test.jsonl"].extra == {**by_name["taiwan_test.jsonl"].extra, "region": "taiwan"}
    assert read_jsonl(tmp_path / "out/us_4opt_test.jsonl")[0]["messages"][2]["content"] == "The answer is B. Malaria"
    for m in manifests:
        assert Path(m.path + ".manifest.json").is_file()

    only = convert_medqa_tree(root / "questions", tmp_path / "out2", regions=["us"], splits=["train"])
    assert sorted(Path(m.path).name for m in only) == ["us_4opt_train.jsonl", "us_5opt_train.jsonl"]
    with pytest.raises(MedtuneError, match="unknown region"):
        convert_medqa_tree(root, tmp_path / "out3", regions=["mars"])


# ---------------------------------------------------------------------------------------------------- split


def chat_row(i: int, pad: int = 0) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": f"q{i:03d}" + "x" * pad},
            {"role": "assistant", "content": f"a{i:03d}"},
        ]
    }


def test_split_by_bytes_never_inside_a_line(tmp_path):
    src = write_jsonl(tmp_path / "data.jsonl", [chat_row(i) for i in range(10)])
    line_len = len(src.read_bytes().splitlines(keepends=True)[0])
    assert all(len(x) == line_len for x in src.read_bytes().splitlines(keepends=True))
    parts = split_file(src, tmp_path / "parts", max_bytes=3 * line_len + 5)
    assert [m.rows for m in parts] == [3, 3, 3, 1]
    assert [Path(m.path).name for m in parts] == [f"data.part00{i}.jsonl" for i in range(1, 5)]
    assert b"".join(Path(m.path).read_bytes() for m in parts) == src.read_bytes()
    for m in parts:
        assert m.bytes <= 3 * line_len + 5
        assert validate_bailian_file(m.path).rows == m.rows
        assert Manifest.load(m.path).sha256 == m.sha256 and m.is_current()
    # exactly at the limit: a part holds 3 lines
    assert [m.rows for m in split_file(src, tmp_path / "p2", max_bytes=3 * line_len)] == [3, 3, 3, 1]
    # a row limit as well
    assert [m.rows for m in split_file(src, tmp_path / "p3", max_bytes=10 * line_len, max_rows=4)] == [4, 4, 2]
    # a re-split into fewer parts removes the stale ones
    assert len(split_file(src, tmp_path / "parts", max_bytes=5 * line_len)) == 2
    assert sorted(p.name for p in (tmp_path / "parts").glob("*.jsonl")) == ["data.part001.jsonl", "data.part002.jsonl"]


def test_split_small_file_is_not_copied_and_keeps_its_manifest(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [ZH_ROW])
    converted = convert_medqa_file(src, tmp_path / "out.jsonl")
    (only,) = split_file(tmp_path / "out.jsonl")
    assert only.path == converted.path and only.sources == converted.sources


def test_split_errors(tmp_path):
    src = write_jsonl(tmp_path / "big.jsonl", [chat_row(0), chat_row(1, pad=500)])
    with pytest.raises(RecordError, match=r"big\.jsonl:2: <line>: .* over the 200-byte limit"):
        split_file(src, max_bytes=200)
    assert not list(tmp_path.glob("big.part*"))  # aborted: no part left behind
    bad = chat_row(2)
    bad["messages"][1], bad["messages"][2] = bad["messages"][2], bad["messages"][1]
    src = write_jsonl(tmp_path / "bad.jsonl", [chat_row(0), chat_row(1), bad])
    with pytest.raises(RecordError, match=r"bad\.jsonl:3: messages\[1\]\.role: roles out of order"):
        split_file(src, max_bytes=150)
    (tmp_path / "blank.jsonl").write_text(json.dumps(chat_row(0)) + "\n\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"blank\.jsonl:2: <line>: blank line"):
        validate_bailian_file(tmp_path / "blank.jsonl")


# -------------------------------------------------------------------------------------------- tokens, cost


def test_token_counts_batch_equals_naive(tmp_path):
    counter = TokenCounter()
    texts = ["男，45岁。头痛3天。", "The answer is B. Malaria", "x<|endoftext|>y", ""]
    assert counter.count_texts(texts) == [len(counter.encode(t)) for t in texts]
    msgs = chat_row(1)["messages"]
    framed = counter.count_messages(msgs)
    assert framed == len(counter.encode(TokenCounter.render(msgs)))
    assert framed > sum(len(counter.encode(m["content"])) for m in msgs)  # chat-format overhead counted
    src = write_jsonl(tmp_path / "in.jsonl", [ZH_ROW] * 5 + [{**EN_ROW}] * 3)
    convert_medqa_file(src, tmp_path / "zh.jsonl", policy="skip")
    stats = count_file_tokens(tmp_path / "zh.jsonl", counter, max_length=30, batch_rows=3)
    assert stats.rows == 8 and stats.tokens > 0
    assert stats.tokens == naive_count_file(tmp_path / "zh.jsonl")
    assert stats.rows_over_max_length == 8 and stats.max_row_tokens > 30


def test_cost_arithmetic():
    # the classic example: 10,000 rows × 200 tokens × 3 epochs = 6M tokens ≈ 12 yuan at 0.002 yuan / 1k tokens
    est = estimate_cost("my-model", 3, 10_000 * 200, prices={"my-model": 0.002})
    assert est.billed_tokens == 6_000_000
    assert est.cost == pytest.approx(12.0)
    assert "12.00 CNY" in est.summary()
    assert estimate_cost("qwen2.5-7b-instruct", 1, 1000).cost == pytest.approx(0.006)
    with pytest.raises(MedtuneError, match="no training price known"):
        estimate_cost("gpt-x", 1, 1)
    with pytest.raises(CostCeilingExceeded, match=r"12\.00 CNY exceeds the ceiling of 10\.00 CNY"):
        check_cost_ceiling(est.cost, 10.0)
    check_cost_ceiling(est.cost, 12.5)
    check_cost_ceiling(est.cost, None)


def test_hyper_parameters_body():
    hp = HyperParameters(n_epochs=2, batch_size=8, learning_rate=1.6e-5, lora_rank=16, lora_alpha=32)
    assert hp.to_api("efficient_sft") == {
        "n_epochs": 2,
        "batch_size": 8,
        "learning_rate": "1.6e-05",
        "max_length": 2048,
        "lora_rank": 16,
        "lora_alpha": 32,
        "target_modules": "ALL",
    }
    assert "lora_rank" not in hp.to_api("sft")
    with pytest.raises(ValueError):
        HyperParameters(n_epochs=0)


# ------------------------------------------------------------------------------------ client vs fake server


@pytest.fixture
def server():
    with FakeDashScope(api_key=KEY, polls_per_state=2) as fake:
        yield fake


def make_client(server, tmp_path, sleeps=None, **kw):
    return BailianClient(
        KEY,
        base_url=server.base_url,
        registry_path=tmp_path / "registry.json",
        retry=RetryPolicy(attempts=3, backoff=0.5),
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
        **kw,
    )


@pytest.fixture
def bailian_file(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [ZH_ROW, ZH_ROW])
    convert_medqa_file(src, tmp_path / "mainland_4opt_train.jsonl")
    return tmp_path / "mainland_4opt_train.jsonl"


def test_upload_retries_5xx_then_never_uploads_twice(server, tmp_path, bailian_file, caplog):
    caplog.set_level(logging.DEBUG)
    sleeps: list[float] = []
    server.fail("POST", "/api/v1/files", status=503)
    client = make_client(server, tmp_path, sleeps)
    info = client.upload(bailian_file)
    assert not info.reused and info.file_id.startswith("file-ft-")
    # the server's list is searched before the upload, again before the retry (a 5xx may have stored it), and once
    # after it (another run may have uploaded the same file at the same moment)
    assert [(r.method, r.path, r.status) for r in server.requests] == [
        ("GET", "/api/v1/files", 200),
        ("POST", "/api/v1/files", 503),
        ("GET", "/api/v1/files", 200),
        ("POST", "/api/v1/files", 200),
        ("GET", "/api/v1/files", 200),
    ]
    assert server.requests[0].query == {"page_no": "1", "page_size": "100"}
    tagged = f"mainland_4opt_train.{info.sha256[:16]}.jsonl"
    assert server.requests[3].body["files"] == [
        {"name": tagged, "bytes": bailian_file.stat().st_size, "sha256": info.sha256}
    ]
    assert server.requests[3].body["descriptions"] == [f"medtune sha256:{info.sha256} mainland_4opt_train.jsonl"]
    assert sleeps == [0.5]
    assert server.file_contents[info.file_id] == bailian_file.read_bytes()

    again = client.upload(bailian_file)  # recorded: verified with one GET, not uploaded
    assert again.reused and again.file_id == info.file_id
    assert server.requests[-1].method == "GET" and server.requests[-1].path == f"/api/v1/files/{info.file_id}"

    # another machine: no registry, and the server's list carries no md5: found by the hash in name/description
    assert "md5" not in client.list_files()[0]
    lost = BailianClient(KEY, base_url=server.base_url, registry_path=tmp_path / "other.json")
    assert lost.upload(bailian_file).file_id == info.file_id
    assert server.count("POST", "/api/v1/files") == 2
    assert KEY not in caplog.text and KEY not in (tmp_path / "registry.json").read_text()


def test_job_created_once_polled_to_success_with_logs(server, tmp_path, bailian_file):
    sleeps: list[float] = []
    client = make_client(server, tmp_path, sleeps)
    train = client.upload(bailian_file).file_id
    spec = JobSpec(
        model="qwen2.5-7b-instruct",
        training_file_ids=[train],
        validation_file_ids=[train],
        hyper_parameters=HyperParameters(n_epochs=3, batch_size=16, learning_rate=1e-4, lora_rank=64),
    )
    job = client.create_job(spec)
    (create,) = server.calls("POST", "/api/v1/fine-tunes")
    tag = create.body.pop("model_name")
    assert tag == "medtune-" + client.job_identity(spec)[:16]
    assert create.body == {
        "model": "qwen2.5-7b-instruct",
        "training_file_ids": [train],
        "validation_file_ids": [train],
        "hyper_parameters": {
            "n_epochs": 3,
            "batch_size": 16,
            "learning_rate": "0.0001",
            "max_length": 2048,
            "lora_rank": 64,
            "lora_alpha": 128,
            "target_modules": "ALL",
        },
        "training_type": "efficient_sft",
    }
    assert job.status == "PENDING" and not job.reused
    lines: list[str] = []
    statuses: list[str] = []
    done = client.wait(
        job.job_id,
        interval=1,
        backoff=2,
        max_interval=3,
        on_log=lines.append,
        on_status=lambda j: statuses.append(j.status),
    )
    assert done.status == "SUCCEEDED" and done.finetuned_output == f"qwen2.5-7b-instruct-{tag}-ft-{job.job_id}"
    assert statuses == ["PENDING", "RUNNING", "SUCCEEDED"]
    assert lines[0] == f"job {job.job_id} queued" and lines[-1] == "finetune-job succeeded"
    assert len(lines) == len(set(lines))  # every line once
    assert sleeps == [1, 1, 2]  # PENDING 1 s; RUNNING resets to 1 s, then grows to 2 s
    logs = server.calls("GET", f"/api/v1/fine-tunes/{job.job_id}/logs")
    assert logs[0].query == {"offset": "0", "line": "1000"}

    again = client.create_job(spec)  # same inputs → the recorded job, no second POST
    assert again.reused and again.job_id == job.job_id
    fresh = BailianClient(KEY, base_url=server.base_url, registry_path=tmp_path / "lost.json")
    assert fresh.create_job(spec).job_id == job.job_id  # found in the remote job list
    assert server.count("POST", "/api/v1/fine-tunes") == 1
    other = client.create_job(spec.model_copy(update={"hyper_parameters": HyperParameters(n_epochs=1)}))
    assert other.job_id != job.job_id and server.count("POST", "/api/v1/fine-tunes") == 2
    assert [j.job_id for j in client.list_jobs()] == [job.job_id, other.job_id]


def test_bad_parameters_fail_fast_and_failed_job_raises(server, tmp_path, bailian_file):
    client = make_client(server, tmp_path)
    train = client.upload(bailian_file).file_id
    with pytest.raises(BailianError) as err:
        client.create_job(JobSpec(model="llama-3-8b", training_file_ids=[train]))
    assert err.value.status_code == 400 and err.value.code == "InvalidParameter"
    assert server.count("POST", "/api/v1/fine-tunes") == 1  # a 400 is not retried

    server.job_outcome = "FAILED"
    job = client.create_job(JobSpec(training_file_ids=[train]))
    with pytest.raises(BailianJobFailed, match="ended FAILED") as failed:
        client.wait(job.job_id, interval=0)
    assert "CUDA out of memory" in str(failed.value)
    assert client.wait(job.job_id, raise_on_failure=False).status == "FAILED"


def test_timeout_cancel_deploy_and_files(server, tmp_path, bailian_file):
    clock = iter(range(0, 1000, 10))
    client = make_client(server, tmp_path)
    file_id = client.upload(bailian_file).file_id
    job = client.create_job(JobSpec(training_file_ids=[file_id]))
    with pytest.raises(BailianTimeout, match="still PENDING"):
        client.wait(job.job_id, interval=5, timeout=12, clock=lambda: next(clock))
    client.cancel_job(job.job_id)
    assert client.get_job(job.job_id).status == "CANCELED"

    dep = client.deploy("qwen2.5-7b-instruct-ft-x", capacity=2, suffix="med")
    assert server.calls("POST", "/api/v1/deployments")[0].body == {
        "model_name": "qwen2.5-7b-instruct-ft-x",
        "capacity": 2,
        "suffix": "med",
    }
    assert client.wait_deployment(dep["deployed_model"], interval=0)["status"] == "RUNNING"
    assert [d["deployed_model"] for d in client.list_deployments()] == [dep["deployed_model"]]

    assert [f["file_id"] for f in client.list_files()] == [file_id]
    client.delete_file(file_id)
    assert client.list_files() == []
    assert client.registry.all("files") == {}
    with pytest.raises(BailianError) as err:
        client.get_file(file_id)
    assert err.value.status_code == 400 and err.value.not_found  # DashScope: 400 "File not found"


def test_key_never_in_logs_or_errors(server, tmp_path, bailian_file, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-key-should-not-leak-42"
    client = BailianClient(wrong, base_url=server.base_url, registry_path=tmp_path / "r.json")
    with pytest.raises(BailianError) as err:
        client.upload(bailian_file)
    assert err.value.status_code == 401
    assert all(not r.auth_ok for r in server.requests)
    assert wrong not in str(err.value) and wrong not in repr(client)

    dead = BailianClient(
        KEY,
        base_url="http://127.0.0.1:9/api/v1",
        registry_path=tmp_path / "r2.json",
        retry=RetryPolicy(attempts=2, backoff=0),
        sleep=lambda s: None,
        request_timeout=2,
    )
    with pytest.raises(BailianError) as down:
        dead.list_jobs()
    assert down.value.transient and down.value.status_code is None
    assert KEY not in str(down.value) and wrong not in caplog.text and KEY not in caplog.text
