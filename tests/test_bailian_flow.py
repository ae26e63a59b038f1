"""Flow ``bailian-upload`` on the real Prefect engine: dry run, a full run against the fake DashScope server,
re-runs that send nothing twice (same machine, a second machine, a file deleted on the server), a failed job
that fails the run, and the newest job winning after ``recreate_failed``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.bailian_upload import SAMPLE_MEDQA, BailianUploadParams, bailian_upload
from medtune_core.bailian import HyperParameters

try:
    from tests.fakes.dashscope_server import FakeDashScope
except ImportError:
    from fakes.dashscope_server import FakeDashScope  # type: ignore[no-redef]

KEY = "sk-flow-test-key-9876543210"
ZH = {
    "question": "男，45岁。头痛3天，伴恶心。最可能的诊断是",
    "options": {"A": "偏头痛", "B": "紧张性头痛", "C": "蛛网膜下腔出血", "D": "脑膜炎"},
    "answer": "蛛网膜下腔出血",
    "answer_idx": "C",
}
EN = {
    "question": "A 23-year-old woman presents with fever. Which is the most likely diagnosis?",
    "options": {"A": "Influenza", "B": "Malaria", "C": "Dengue", "D": "Typhoid"},
    "answer": "Malaria",
    "answer_idx": "B",
}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


SUMMARY_KEYS = {"estimated_cost_cny", "training_rows", "rejected_rows", "warning"}


def posts(server, path: str) -> int:
    """Successful POSTs to ``path``: what was created (and paid for)."""
    return len([r for r in server.calls("POST", path) if r.status == 200])


def medqa_tree(root: Path) -> Path:
    q = root / "questions"
    write_jsonl(q / "Mainland/4_options/phrases_no_exclude_train.jsonl", [ZH] * 6)
    write_jsonl(q / "Mainland/4_options/phrases_no_exclude_dev.jsonl", [ZH] * 2)
    write_jsonl(q / "Taiwan/train.jsonl", [ZH] * 2)
    write_jsonl(q / "US/4_options/phrases_no_exclude_train.jsonl", [EN] * 3)
    write_jsonl(q / "US/4_options/phrases_no_exclude_test.jsonl", [EN])
    return root


def test_dry_run_converts_splits_and_estimates(prefect_harness, tmp_path):
    root = medqa_tree(tmp_path / "MedQA")
    write_jsonl(root / "questions/Taiwan/train.jsonl", [ZH, {**ZH, "answer": "偏头痛"}, ZH])  # one bad row
    params = BailianUploadParams(source_dir=root, output_dir=tmp_path / "out", max_file_mb=0.001, policy="skip")
    assert params.dry_run
    out = bailian_upload(params)
    names = sorted(k for k in out if k not in SUMMARY_KEYS)
    bases = sorted({n.split(".part")[0] for n in names})
    assert bases == ["mainland_4opt_dev", "mainland_4opt_train", "taiwan_train", "us_4opt_train"]  # no test split
    assert "mainland_4opt_train.part002" in names  # 6 rows are over 1 KB: split, whole lines only
    rows = sum(
        len(Path(out[n]).read_text(encoding="utf-8").splitlines()) for n in names if n.startswith("mainland_4opt_train")
    )
    assert rows == 6
    for n in names:
        assert Path(out[n]).stat().st_size <= 1000  # 0.001 MB is 1,000 bytes (decimal)
    assert float(out["estimated_cost_cny"]) > 0
    # the summary counts the rejected row and warns about the row count (a dry run does not refuse)
    assert out["rejected_rows"] == "1" and out["training_rows"] == str(6 + 2 + 3)
    assert "only 11 training rows" in out["warning"] and "at least 1,000" in out["warning"]


def test_high_ceiling_needs_confirmation():
    with pytest.raises(ValueError, match="set confirm_cost=true"):
        BailianUploadParams(max_cost=500)
    assert BailianUploadParams(max_cost=500, confirm_cost=True).max_cost == 500


def test_full_run_then_rerun_sends_nothing_twice(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    with FakeDashScope(api_key=KEY, polls_per_state=1) as server:
        params = BailianUploadParams(
            source_dir=medqa_tree(tmp_path / "MedQA"),
            output_dir=tmp_path / "out",
            regions=["mainland", "us"],
            dry_run=False,
            base_url=server.base_url,
            registry=tmp_path / "registry.json",
            poll_interval_s=0,
            hyper_parameters=HyperParameters(n_epochs=2, batch_size=8),
        )
        # too few rows for Bailian: a real run is refused before anything is sent
        refused = bailian_upload(params, return_state=True)
        assert refused.is_failed() and "only 9 training rows" in refused.message
        assert server.requests == []

        params = params.model_copy(update={"min_training_rows": 1})
        server.fail("POST", "/api/v1/files", status=502)  # the first upload fails once, then is retried
        out = bailian_upload(params)
        assert out["status"] == "SUCCEEDED" and out["finetuned_output"].startswith("qwen2.5-7b-instruct-medtune-")
        uploads = [r for r in server.calls("POST", "/api/v1/files") if r.status == 200]
        assert sorted(r.body["files"][0]["name"].split(".")[0] for r in uploads) == [
            "mainland_4opt_dev",
            "mainland_4opt_train",
            "us_4opt_train",
        ]
        (create,) = server.calls("POST", "/api/v1/fine-tunes")
        assert create.body["hyper_parameters"]["n_epochs"] == 2
        assert len(create.body["training_file_ids"]) == 2 and len(create.body["validation_file_ids"]) == 1
        assert KEY not in json.dumps(out)

        again = bailian_upload(params)
        assert again["job_id"] == out["job_id"]
        assert posts(server, "/api/v1/files") == 3 and posts(server, "/api/v1/fine-tunes") == 1

        # a second machine: fresh outputs, a fresh MEDTUNE_HOME (its default registry), the file list has no md5
        monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path / "home2"))
        elsewhere = params.model_copy(update={"output_dir": tmp_path / "machine2", "registry": None})
        second = bailian_upload(elsewhere)
        assert second["job_id"] == out["job_id"] and second["reused"] == "True" and out["reused"] == "False"
        assert second["endpoint"] == server.base_url and second["endpoint_from"] == "base_url"
        assert (tmp_path / "home2" / "bailian" / "registry.json").is_file()
        assert posts(server, "/api/v1/files") == 3 and posts(server, "/api/v1/fine-tunes") == 1

        # a file deleted in the console: uploaded again (400 "File not found" is gone, like 404), no second job
        server.remove_file(create.body["validation_file_ids"][0])
        after_delete = bailian_upload(params)
        assert after_delete["job_id"] == out["job_id"] and after_delete["status"] == "SUCCEEDED"
        assert posts(server, "/api/v1/files") == 4 and posts(server, "/api/v1/fine-tunes") == 1

        server.job_outcome = "FAILED"
        failing = params.model_copy(update={"hyper_parameters": HyperParameters(n_epochs=1)})
        state = bailian_upload(failing, return_state=True)
        assert state.is_failed() and "ended FAILED" in state.message
        assert posts(server, "/api/v1/fine-tunes") == 2 and posts(server, "/api/v1/files") == 4

        # the failed job is not re-created by a plain re-run; recreate_failed asks for a new one
        server.job_outcome = "SUCCEEDED"
        assert bailian_upload(failing, return_state=True).is_failed()
        assert posts(server, "/api/v1/fine-tunes") == 2
        retried = bailian_upload(failing.model_copy(update={"recreate_failed": True}))
        assert retried["status"] == "SUCCEEDED" and retried["job_id"] != out["job_id"]
        assert posts(server, "/api/v1/fine-tunes") == 3
        # ... and from then on the plain run gets the newest job for these inputs, not the old FAILED one
        plain = bailian_upload(failing)
        assert plain["job_id"] == retried["job_id"] and plain["status"] == "SUCCEEDED"
        assert posts(server, "/api/v1/fine-tunes") == 3 and posts(server, "/api/v1/files") == 4


def test_source_files_with_one_name_in_two_folders_do_not_overwrite(prefect_harness, tmp_path):
    q = medqa_tree(tmp_path / "MedQA") / "questions"
    write_jsonl(q / "US/train.jsonl", [EN] * 4)
    params = BailianUploadParams(
        source_files=[q / "Taiwan/train.jsonl", q / "US/train.jsonl"],
        validation_files=[q / "Mainland/4_options/phrases_no_exclude_dev.jsonl"],
        output_dir=tmp_path / "out",
    )
    out = bailian_upload(params)
    assert sorted(k for k in out if k not in SUMMARY_KEYS) == [
        "Taiwan-train",
        "US-train",
        "phrases_no_exclude_dev",
    ]
    assert len(Path(out["Taiwan-train"]).read_text(encoding="utf-8").splitlines()) == 2
    assert "Malaria" in Path(out["US-train"]).read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="would write the same output file"):
        BailianUploadParams(source_files=[q / "US/train.jsonl", q / "US/train.jsonl"])


def test_language_auto_reads_the_text_and_can_be_forced(prefect_harness, tmp_path):
    english = tmp_path / "exports" / "cases.jsonl"  # English, and no US folder anywhere in its path
    write_jsonl(english, [EN] * 2)
    params = BailianUploadParams(source_files=[english], output_dir=tmp_path / "out")
    assert params.language == "auto"
    row = json.loads(Path(bailian_upload(params)["cases"]).read_text(encoding="utf-8").splitlines()[0])
    assert row["messages"][2]["content"] == "The answer is B. Malaria"
    assert row["messages"][1]["content"].endswith("Options:\nA. Influenza\nB. Malaria\nC. Dengue\nD. Typhoid")
    forced = bailian_upload(params.model_copy(update={"language": "zh", "output_dir": tmp_path / "zh"}))
    row = json.loads(Path(forced["cases"]).read_text(encoding="utf-8").splitlines()[0])
    assert row["messages"][2]["content"] == "答案是 B. Malaria"
    with pytest.raises(ValueError):
        BailianUploadParams(language="fr")


@pytest.mark.skipif(not (SAMPLE_MEDQA / "questions").is_dir(), reason="sample MedQA data not present")
def test_defaults_run_on_sample_data(prefect_harness, tmp_path):
    out = bailian_upload(BailianUploadParams(output_dir=tmp_path / "out"))
    assert any(k.endswith("_train") for k in out)
