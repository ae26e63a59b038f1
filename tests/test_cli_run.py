"""``medtune run`` as a user runs it: a subprocess, the ephemeral Prefect server, a JSON last line."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli_process import run_medtune


def test_run_prints_json_last_line_and_writes_outputs(tmp_path: Path) -> None:
    src = tmp_path / "qa.jsonl"
    src.write_text('{"问": "发烧怎么办", "答": "多喝水，持续高热请就医。"}\n', encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"inputs: [{src}]\nchat_format: sharegpt\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run_medtune("run", "prepare-data", "--config", str(recipe), "--set", f"output_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["flow"] == "prepare-data" and summary["state"] == "COMPLETED"
    assert len(summary["flow_run_id"]) == 36
    written = Path(summary["outputs"]["qa"])
    assert written == out / "qa.sharegpt.jsonl"
    assert json.loads(written.read_text(encoding="utf-8"))["conversations"][0]["value"] == "发烧怎么办"
    assert (out / "qa.sharegpt.jsonl.manifest.json").exists()
    # the flow's own log, not one line per HTTP request (the Prefect API here, an LLM endpoint in data-synthesis)
    assert "Beginning flow run" in result.stderr and "HTTP Request:" not in result.stderr
    # nothing but the run's story: the ephemeral server's own shutdown chatter goes to its log file
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_run_rejects_bad_parameters_before_running(tmp_path: Path) -> None:
    result = run_medtune("run", "prepare-data", "--set", "policy=sometimes", cwd=tmp_path)
    assert result.returncode == 2
    assert "policy: Input should be 'strict' or 'skip'" in result.stderr
    result = run_medtune("run", "no-such-flow", cwd=tmp_path)
    assert result.returncode == 2 and "unknown flow 'no-such-flow'" in result.stderr


def test_a_failed_run_exits_1_with_the_summary_line(tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"conversations": [{"from": "human"}]}\n', encoding="utf-8")
    result = run_medtune(
        "run", "prepare-data", "--set", f"inputs=[{src}]", "--set", f"output_dir={tmp_path / 'o'}", cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["state"] == "FAILED" and "bad.jsonl:1" in summary["error"], summary
    # the user's error is one line naming file:line, not buried in the tracebacks Prefect logs with every failure
    assert "bad.jsonl:1: conversations[0].value" in result.stderr
    assert "raise RecordError" not in result.stderr, result.stderr[-3000:]
