"""Flow ``bailian-upload`` on the real Prefect engine: dry run, a full run against the fake DashScope server,
a re-run that sends nothing twice, and a failed job that fails the run."""

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


def medqa_tree(root: Path) -> Path:
    q = root / "questions"
    write_jsonl(q / "Mainland/4_options/phrases_no_exclude_train.jsonl", [ZH] * 6)
    write_jsonl(q / "Mainland/4_options/phrases_no_exclude_dev.jsonl", [ZH] * 2)
    write_jsonl(q / "Taiwan/train.jsonl", [ZH] * 2)
    write_jsonl(q / "US/4_options/phrases_no_exclude_train.jsonl", [EN] * 3)
    write_jsonl(q / "US/4_options/phrases_no_exclude_test.jsonl", [EN])
    return root


def test_dry_run_converts_splits_and_estimates(prefect_harness, tmp_path):
    params = BailianUploadParams(
        source_dir=medqa_tree(tmp_path / "MedQA"), output_dir=tmp_path / "out", max_file_mb=0.001
    )
    assert params.dry_run
    out = bailian_upload(params)
    names = sorted(k for k in out if k != "estimated_cost_cny")
    bases = sorted({n.split(".part")[0] for n in names})
    assert bases == ["mainland_4opt_dev", "mainland_4opt_train", "taiwan_train", "us_4opt_train"]  # no test split
    assert "mainland_4opt_train.part002" in names  # 6 rows are over 1 KB: split, whole lines only
    rows = sum(
        len(Path(out[n]).read_text(encoding="utf-8").splitlines()) for n in names if n.startswith("mainland_4opt_train")
    )
    assert rows == 6
    for path in (v for k, v in out.items() if k != "estimated_cost_cny"):
        assert Path(path).stat().st_size <= 1048
    assert float(out["estimated_cost_cny"]) > 0


def test_high_ceiling_needs_confirmation():
    with pytest.raises(ValueError, match="set confirm_cost=true"):
        BailianUploadParams(max_cost=500)
    assert BailianUploadParams(max_cost=500, confirm_cost=True).max_cost == 500


def test_full_run_then_rerun_sends_nothing_twice(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    with FakeDashScope(api_key=KEY, polls_per_state=1) as server:
        server.fail("POST", "/api/v1/files", status=502)  # the first upload fails once, then is retried
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
        out = bailian_upload(params)
        assert out["status"] == "SUCCEEDED" and out["finetuned_output"].startswith("qwen2.5-7b-instruct-ft-")
        uploads = [r for r in server.calls("POST", "/api/v1/files") if r.status == 200]
        assert sorted(r.body["files"][0]["name"] for r in uploads) == [
            "mainland_4opt_dev.jsonl",
            "mainland_4opt_train.jsonl",
            "us_4opt_train.jsonl",
        ]
        (create,) = server.calls("POST", "/api/v1/fine-tunes")
        assert create.body["hyper_parameters"]["n_epochs"] == 2
        assert len(create.body["training_file_ids"]) == 2 and len(create.body["validation_file_ids"]) == 1
        assert KEY not in json.dumps(out)

        before = len(server.requests)
        again = bailian_upload(params)
        assert again["job_id"] == out["job_id"]
        assert len(server.requests) == before  # every remote step came back from the cache

        server.job_outcome = "FAILED"
        failing = params.model_copy(update={"hyper_parameters": HyperParameters(n_epochs=1)})
        state = bailian_upload(failing, return_state=True)
        assert state.is_failed() and "ended FAILED" in state.message
        assert server.count("POST", "/api/v1/fine-tunes") == 2
        assert len([r for r in server.calls("POST", "/api/v1/files") if r.status == 200]) == 3  # no re-upload

        # the failed job is not re-created by a plain re-run; recreate_failed asks for a new one
        server.job_outcome = "SUCCEEDED"
        assert bailian_upload(failing, return_state=True).is_failed()
        assert server.count("POST", "/api/v1/fine-tunes") == 2
        retried = bailian_upload(failing.model_copy(update={"recreate_failed": True}))
        assert retried["status"] == "SUCCEEDED" and retried["job_id"] != out["job_id"]
        assert server.count("POST", "/api/v1/fine-tunes") == 3
        assert len([r for r in server.calls("POST", "/api/v1/files") if r.status == 200]) == 3


def test_source_files_with_one_name_in_two_folders_do_not_overwrite(prefect_harness, tmp_path):
    q = medqa_tree(tmp_path / "MedQA") / "questions"
    write_jsonl(q / "US/train.jsonl", [EN] * 4)
    params = BailianUploadParams(
        source_files=[q / "Taiwan/train.jsonl", q / "US/train.jsonl"],
        validation_files=[q / "Mainland/4_options/phrases_no_exclude_dev.jsonl"],
        output_dir=tmp_path / "out",
    )
    out = bailian_upload(params)
    assert sorted(k for k in out if k != "estimated_cost_cny") == [
        "Taiwan-train",
        "US-train",
        "phrases_no_exclude_dev",
    ]
    assert len(Path(out["Taiwan-train"]).read_text(encoding="utf-8").splitlines()) == 2
    assert "Malaria" in Path(out["US-train"]).read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="would write the same output file"):
        BailianUploadParams(source_files=[q / "US/train.jsonl", q / "US/train.jsonl"])


@pytest.mark.skipif(not (SAMPLE_MEDQA / "questions").is_dir(), reason="sample MedQA data not present")
def test_defaults_run_on_sample_data(prefect_harness, tmp_path):
    out = bailian_upload(BailianUploadParams(output_dir=tmp_path / "out"))
    assert any(k.endswith("_train") for k in out)
