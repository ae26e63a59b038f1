"""Bailian: never a second upload or a second paid job, on any machine, after any crash; the SDK's conventions.

Every case runs the real ``dashscope`` SDK (and the streamed upload) against the project's fake DashScope server,
which answers like the real one where that is awkward: no md5 in its file list, ``400 File not found`` for a
deleted file, job names that show the creator's tag only once a job succeeded, log offsets ignored on request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli_bailian import app as bailian_cli
from medtune_core.bailian import (
    BailianClient,
    BailianError,
    JobSpec,
    LogCursor,
    RetryPolicy,
    convert_medqa_file,
    resolve_endpoint,
)
from medtune_core.errors import RecordError
from tasks.bailian import BailianEndpoint
from tests.fakes.dashscope_server import FakeDashScope

KEY = "sk-identity-test-0123456789abcdef"
ROW = {
    "question": "男，45岁。头痛3天，伴恶心。最可能的诊断是",
    "options": {"A": "偏头痛", "B": "紧张性头痛", "C": "蛛网膜下腔出血", "D": "脑膜炎"},
    "answer": "蛛网膜下腔出血",
    "answer_idx": "C",
}
REPO = Path(__file__).resolve().parent.parent


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def bailian_file(tmp_path) -> Path:
    src = write_jsonl(tmp_path / "medqa.jsonl", [ROW] * 3)
    convert_medqa_file(src, tmp_path / "train.jsonl")
    return tmp_path / "train.jsonl"


def client_for(server: FakeDashScope, registry: Path, **kw) -> BailianClient:
    kw.setdefault("retry", RetryPolicy(attempts=3, backoff=0))
    return BailianClient(KEY, base_url=server.base_url, registry_path=registry, sleep=lambda s: None, **kw)


def created(server: FakeDashScope, path: str) -> int:
    return len([r for r in server.calls("POST", path) if r.status == 200])


# ------------------------------------------------------------------------------------------- kill -9, timeout

RUN = textwrap.dedent(
    """
    import sys
    from medtune_core.bailian import BailianClient, JobSpec
    base_url, registry, path = sys.argv[1:4]
    client = BailianClient(base_url=base_url, registry_path=registry)
    info = client.upload(path)
    client.create_job(JobSpec(training_file_ids=[info.file_id]))
    """
)


@pytest.mark.parametrize("held", ["/api/v1/files", "/api/v1/fine-tunes"])
def test_kill_9_between_store_and_answer_then_fresh_home_creates_nothing(tmp_path, bailian_file, held):
    with FakeDashScope(api_key=KEY) as server:
        hold = server.hold("POST", held)
        env = {**os.environ, "DASHSCOPE_API_KEY": KEY}
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN, server.base_url, str(tmp_path / "home1" / "registry.json"), str(bailian_file)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert hold.holding.wait(60), "the run never reached the held request"
        finally:
            proc.kill()  # SIGKILL: no cleanup, no answer read, nothing recorded after the request
            proc.wait()
            hold.release.set()
        assert len(server.files) == 1  # the server stored it; the client never learned the id
        jobs_before = len(server.jobs)

        # the re-run on a fresh MEDTUNE_HOME (nothing local at all) finds both by the identities the server keeps
        client = client_for(server, tmp_path / "home2" / "registry.json")
        info = client.upload(bailian_file)
        job = client.create_job(JobSpec(training_file_ids=[info.file_id]))
        assert info.reused and info.file_id == next(iter(server.files))
        assert created(server, "/api/v1/files") == 1 and len(server.files) == 1
        assert created(server, "/api/v1/fine-tunes") == 1 and len(server.jobs) == 1
        assert job.reused == (jobs_before == 1)


def test_timeout_after_the_server_stored_is_not_retried_blindly(tmp_path, bailian_file):
    with FakeDashScope(api_key=KEY) as server:
        hold = server.hold("POST", "/api/v1/files")
        client = client_for(server, tmp_path / "r.json", request_timeout=1.0)
        try:
            info = client.upload(bailian_file)  # times out, searches the list again, finds the stored file
        finally:
            hold.release.set()
        assert info.reused and len(server.files) == 1 and created(server, "/api/v1/files") == 1
        job_hold = server.hold("POST", "/api/v1/fine-tunes")
        try:
            job = client.create_job(JobSpec(training_file_ids=[info.file_id]))
        finally:
            job_hold.release.set()
        assert job.reused and len(server.jobs) == 1


@pytest.mark.parametrize("what", ["files", "fine-tunes"])
def test_two_machines_at_the_same_moment_leave_one_file_and_one_training_job(tmp_path, bailian_file, what):
    with FakeDashScope(api_key=KEY) as server:
        first = client_for(server, tmp_path / "a" / "r.json")  # two homes: no shared lock folder
        file_id = first.upload(bailian_file).file_id if what == "fine-tunes" else None
        # machine a has listed (nothing there yet) when machine b lists, uploads or creates, and finishes
        hold = server.hold("GET", f"/api/v1/{what}")
        results: dict[str, object] = {}

        def machine_a() -> None:
            if what == "files":
                results["a"] = first.upload(bailian_file).file_id
            else:
                results["a"] = first.create_job(JobSpec(training_file_ids=[file_id])).job_id

        worker = threading.Thread(target=machine_a)
        worker.start()
        assert hold.holding.wait(30)
        b = client_for(server, tmp_path / "b" / "r.json")
        if what == "files":
            results["b"] = b.upload(bailian_file).file_id
        else:
            results["b"] = b.create_job(JobSpec(training_file_ids=[file_id])).job_id
        hold.release.set()
        worker.join(30)
        assert results["a"] == results["b"]  # both runs go on with the same one
        if what == "files":
            assert list(server.files) == [results["b"]] and created(server, "/api/v1/files") == 2
            (deleted,) = [r.path for r in server.requests if r.method == "DELETE"]  # the late copy, by its uploader
            assert deleted.startswith("/api/v1/files/file-ft-") and not deleted.endswith(str(results["a"]))
        else:
            statuses = {j: job.output["status"] for j, job in server.jobs.items()}
            assert [s for s in statuses.values() if s != "CANCELED"] == [statuses[str(results["b"])]]
            assert len(statuses) == 2  # the late one was cancelled before it could train


# --------------------------------------------------------------------------------------- the server is the truth


def test_newest_job_for_the_same_inputs_wins_over_any_registry(tmp_path, bailian_file):
    with FakeDashScope(api_key=KEY) as server:
        a = client_for(server, tmp_path / "a.json")
        spec = JobSpec(training_file_ids=[a.upload(bailian_file).file_id])
        first = a.create_job(spec)
        server.fail_job(first.job_id)
        # another machine sees the FAILED job (same inputs) and does not pay again without being asked
        b = client_for(server, tmp_path / "b.json")
        seen = b.create_job(spec)
        assert seen.job_id == first.job_id and seen.status == "FAILED" and seen.reused
        second = b.create_job(spec, recreate_failed=True)
        assert second.job_id != first.job_id and not second.reused
        # machine a's registry still says the first job: the server's newest job for these inputs wins
        assert a.create_job(spec).job_id == second.job_id
        assert client_for(server, tmp_path / "c.json").create_job(spec).job_id == second.job_id
        assert created(server, "/api/v1/fine-tunes") == 2
        # each job was created with its identity tag; the second one with a distinct model name
        names = [r.body["model_name"] for r in server.calls("POST", "/api/v1/fine-tunes")]
        assert names[1] == names[0] + "-2" and names[0].startswith("medtune-")


def test_cli_upload_reuploads_a_file_deleted_in_the_console(tmp_path, bailian_file, monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    with FakeDashScope(api_key=KEY) as server:
        args = ["upload", str(bailian_file), "--base-url", server.base_url]
        first = runner.invoke(bailian_cli, args)
        assert first.exit_code == 0, first.output
        (file_id,) = server.files
        assert first.output.strip() == f"{bailian_file}: {file_id}"
        again = runner.invoke(bailian_cli, args)
        assert again.exit_code == 0 and "(already uploaded)" in again.output
        server.remove_file(file_id)  # the console: GET now answers 400 "File not found"
        third = runner.invoke(bailian_cli, args)
        assert third.exit_code == 0, third.output
        (new_id,) = server.files
        assert new_id != file_id and new_id in third.output and created(server, "/api/v1/files") == 2
        # a raw MedQA file is refused before anything is sent, with file:line: field
        raw = write_jsonl(tmp_path / "raw.jsonl", [ROW])
        before = len(server.requests)
        refused = runner.invoke(bailian_cli, ["upload", str(raw), "--base-url", server.base_url])
        assert refused.exit_code == 1 and f"{raw}:1: messages" in refused.output
        assert len(server.requests) == before


def test_upload_refuses_raw_medqa_with_file_line_field(tmp_path):
    raw = write_jsonl(tmp_path / "raw.jsonl", [ROW])
    with FakeDashScope(api_key=KEY) as server:
        with pytest.raises(RecordError, match=r"raw\.jsonl:1: messages"):
            client_for(server, tmp_path / "r.json").upload(raw)
        assert server.requests == []


# ------------------------------------------------------------------------------------------- SDK conventions


def test_sdk_environment_variables_win_over_the_region_table(tmp_path, monkeypatch):
    with FakeDashScope(api_key=KEY) as server:
        monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", server.base_url)
        monkeypatch.setenv("DASHSCOPE_WORKSPACE_ID", "ws-from-env")
        monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
        # an explicit region does not beat the SDK's own URL variable: nothing goes to production
        client = BailianClient(region="cn-beijing", registry_path=tmp_path / "r.json")
        assert client.base_url == server.base_url and client.endpoint_source == "DASHSCOPE_HTTP_BASE_URL"
        assert client.workspace == "ws-from-env"
        assert client.list_files() == [] and server.count("GET", "/api/v1/files") == 1
        # the flow's endpoint (no base_url parameter) goes the same way
        flow_client = BailianEndpoint(registry=str(tmp_path / "r.json")).client()
        assert flow_client.base_url == server.base_url
        # an explicit base_url beats the variable
        assert resolve_endpoint("cn-beijing", "http://127.0.0.1:9/api/v1/").base_url == "http://127.0.0.1:9/api/v1"
        monkeypatch.delenv("DASHSCOPE_HTTP_BASE_URL")
        monkeypatch.setenv("DASHSCOPE_API_REGION", "ap-southeast-1")
        assert resolve_endpoint().base_url == "https://dashscope-intl.aliyuncs.com/api/v1"
        assert resolve_endpoint("cn-beijing").base_url == "https://dashscope.aliyuncs.com/api/v1"
        # the key file the SDK's save_api_key writes, when no key variable is set
        monkeypatch.delenv("DASHSCOPE_API_KEY")
        monkeypatch.delenv("MEDTUNE_DASHSCOPE_API_KEY", raising=False)
        (tmp_path / "api_key").write_text(KEY + "\n")
        monkeypatch.setenv("DASHSCOPE_API_KEY_FILE_PATH", str(tmp_path / "api_key"))
        keyed = BailianClient(base_url=server.base_url, registry_path=tmp_path / "r.json")
        assert keyed.list_files() == [] and all(r.auth_ok for r in server.requests)


# ------------------------------------------------------------------------------------------ retries and logs


def test_retries_only_transient_errors(tmp_path):
    sleeps: list[float] = []
    with FakeDashScope(api_key=KEY) as server:
        client = BailianClient(
            KEY,
            base_url=server.base_url,
            registry_path=tmp_path / "r.json",
            retry=RetryPolicy(attempts=4, backoff=0.25),
            sleep=sleeps.append,
        )
        server.fail("GET", "/api/v1/fine-tunes", status=429, times=2)
        assert client.list_jobs() == []
        assert sleeps == [0.25, 0.5] and server.count("GET", "/api/v1/fine-tunes") == 3
        server.fail("GET", "/api/v1/fine-tunes", status=403, code="AccessDenied")
        with pytest.raises(BailianError) as denied:
            client.list_jobs()
        assert denied.value.status_code == 403 and not denied.value.transient
        assert server.count("GET", "/api/v1/fine-tunes") == 4  # a 4xx is not retried

    calls = []

    def broken(**kwargs):  # a programming error inside a call: never retried
        calls.append(1)
        raise AttributeError("'NoneType' object has no attribute 'output'")

    with pytest.raises(BailianError, match="AttributeError") as err:
        client._call("broken", broken)
    assert calls == [1] and not err.value.transient and sleeps == [0.25, 0.5]


def test_poll_logs_once_each_when_the_server_ignores_offsets(tmp_path, bailian_file):
    with FakeDashScope(api_key=KEY, polls_per_state=2, ignore_log_offsets=True) as server:
        client = client_for(server, tmp_path / "r.json")
        job = client.create_job(JobSpec(training_file_ids=[client.upload(bailian_file).file_id]))
        lines: list[str] = []
        client.wait(job.job_id, interval=0, on_log=lines.append)
        assert lines == server.jobs[job.job_id].logs  # each line once, in order
        assert client.new_log_lines(job.job_id, LogCursor()) == lines


def test_log_cursor_lines_up_pages_whatever_the_offset_did():
    cursor = LogCursor()
    assert cursor.feed(["a", "b"]) == ["a", "b"]
    assert cursor.feed(["a", "b", "c"]) == ["c"]  # offset ignored: the page starts at the first line
    assert cursor.feed(["c", "d"]) == ["d"]  # 1-based offset: the page starts at the last line seen
    assert cursor.feed(["e"]) == ["e"]  # offset honoured
    assert cursor.feed([]) == [] and cursor.lines == ["a", "b", "c", "d", "e"]


def test_a_run_stopped_before_it_watched_its_job_cancels_that_job_once(tmp_path, bailian_file):
    with FakeDashScope(api_key=KEY, polls_per_state=10_000) as server:  # jobs stay RUNNING
        client = client_for(server, tmp_path / "registry.json")
        spec = JobSpec(training_file_ids=[client.upload(bailian_file).file_id])
        job = client.create_job(spec)
        # a fresh machine (no registry) finds the job for these inputs by its identity and cancels it
        other = client_for(server, tmp_path / "other.json")
        assert other.cancel_unfinished_jobs_for(spec) == [job.job_id]
        assert client.get_job(job.job_id).status == "CANCELED"
        assert other.cancel_unfinished_jobs_for(spec) == []  # an ended job is left alone
        assert len([r for r in server.calls("POST") if r.path.endswith("/cancel")]) == 1
