"""Cache policy on the real Prefect engine: keys follow file contents, task source and the other inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow
from pydantic import SecretStr

from medtune_core.dataio import DatasetReader, Policy, write_records
from tasks.base import call_fresh, medtune_task, submit_fresh
from tasks.caching import OutputPath, fingerprint
from tasks.data import convert_dataset
from tasks.retries import is_cuda_oom, is_transient_network_error

CALLS: list[str] = []


@medtune_task
def count_rows(path: Path) -> int:
    CALLS.append("count_rows")
    return sum(1 for _ in path.open(encoding="utf-8"))


@medtune_task
def count_chars(path: Path) -> int:
    CALLS.append("count_chars")
    return len(path.read_text(encoding="utf-8"))


@flow
def count_flow(path: Path) -> tuple[int, int, str, str]:
    rows_state = count_rows(path, return_state=True)
    chars_state = count_chars(path, return_state=True)
    return rows_state.result(), chars_state.result(), rows_state.name, chars_state.name


pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_same_contents_hit_changed_contents_recompute(tmp_path: Path) -> None:
    data = tmp_path / "rows.txt"
    data.write_text("a\nb\n", encoding="utf-8")
    CALLS.clear()
    assert count_flow(data) == (2, 4, "Completed", "Completed")
    assert CALLS == ["count_rows", "count_chars"]  # different tasks, equal arguments: two results

    CALLS.clear()
    assert count_flow(data) == (2, 4, "Cached", "Cached")  # a second flow run reuses both
    assert CALLS == []

    data.write_text("a\nb\nc\n", encoding="utf-8")  # same path, new contents
    CALLS.clear()
    assert count_flow(data) == (3, 6, "Completed", "Completed")
    assert CALLS == ["count_rows", "count_chars"]

    twin = tmp_path / "twin.txt"  # equal bytes under another name: outputs may be named after inputs
    twin.write_text("a\nb\nc\n", encoding="utf-8")
    CALLS.clear()
    assert count_flow(twin)[2:] == ("Completed", "Completed")


def test_deleted_output_is_recomputed_not_served_stale(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"question": "q", "answer": "a"}\n', encoding="utf-8")
    dst = tmp_path / "out.jsonl"

    @flow
    def convert_twice() -> str:
        return call_fresh(convert_dataset, src, dst, "messages", Policy.STRICT).path

    convert_twice()
    written = dst.stat().st_mtime_ns
    convert_twice()  # the output now exists: it counts by location in the key, so this is a cache hit
    assert dst.stat().st_mtime_ns == written
    dst.unlink()
    assert convert_twice() == str(dst)
    assert [c.messages[0].content for c in DatasetReader(dst)] == ["q"]


def test_fingerprint_uses_contents_and_hides_secrets(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_text("one", encoding="utf-8")
    before = fingerprint({"file": f, "key": SecretStr("sk-secret-value")})
    assert "sk-secret-value" not in repr(before)
    assert before == fingerprint({"file": f, "key": SecretStr("another-key")})
    f.write_text("two", encoding="utf-8")
    assert fingerprint({"file": f}) != fingerprint({"file": tmp_path / "missing.txt"})
    manifest = write_records(tmp_path / "m.jsonl", [], "messages")
    assert fingerprint(manifest) == ("manifest", "messages", manifest.sha256)


class _HTTPError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status


@pytest.mark.parametrize(("status", "retry"), [(400, False), (401, False), (422, False), (429, True), (500, True)])
def test_network_retry_preset(status: int, retry: bool) -> None:
    assert is_transient_network_error(_HTTPError(status)) is retry
    assert is_transient_network_error(TimeoutError()) is True
    assert is_transient_network_error(ValueError("bad input")) is False


def test_only_network_errors_are_retried() -> None:
    import httpx
    import openai

    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    for exc in (ConnectionRefusedError(111, "refused"), openai.APIConnectionError(request=request)):
        assert is_transient_network_error(exc) is True
    assert is_transient_network_error(openai.APITimeoutError(request=request)) is True
    for exc in (AttributeError("'NoneType' object has no attribute 'x'"), KeyError("k"), RuntimeError("bug")):
        assert is_transient_network_error(exc) is False

    class Declared(Exception):
        transient = True

    assert is_transient_network_error(Declared()) is True


ATTEMPTS: list[int] = []


@medtune_task(retry="network", cache=False, retry_delay_seconds=0)
def buggy_network_call() -> None:
    ATTEMPTS.append(1)
    raise AttributeError("a bug, not the network")


def test_a_bug_in_a_network_task_runs_once() -> None:
    @flow
    def once() -> str:
        return buggy_network_call(return_state=True).name

    ATTEMPTS.clear()
    assert once() == "Failed" and len(ATTEMPTS) == 1


RUNS: list[str] = []


@medtune_task
def write_folder(src: Path, out_dir: str) -> dict[str, OutputPath]:
    RUNS.append(out_dir)
    folder = Path(out_dir) / "merged"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights.bin").write_bytes(src.read_bytes())
    return {"model": OutputPath.of(folder), "config": OutputPath.of(Path(out_dir) / "cfg.txt")}


def test_a_result_naming_a_deleted_or_changed_folder_is_recomputed(tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "src.bin"
    src.write_bytes(b"weights")
    out = tmp_path / "run"
    out.mkdir()
    (out / "cfg.txt").write_text("lr=1", encoding="utf-8")

    @flow
    def twice(submitted: bool) -> str:
        if submitted:
            return str(submit_fresh(write_folder, src, str(out)).result()["model"])
        return str(call_fresh(write_folder, src, str(out))["model"])

    RUNS.clear()
    assert twice(False) == str(out / "merged") and len(RUNS) == 1
    assert twice(True) == str(out / "merged") and len(RUNS) == 1  # cache hit: the folder is as it was
    shutil.rmtree(out / "merged")  # the next stage must not start from a missing model
    assert twice(False) == str(out / "merged") and len(RUNS) == 2 and (out / "merged" / "weights.bin").is_file()
    (out / "merged" / "weights.bin").write_bytes(b"tampered")
    assert twice(True) == str(out / "merged") and len(RUNS) == 3
    assert (out / "merged" / "weights.bin").read_bytes() == b"weights"
    ref = OutputPath.of(out / "merged")
    assert Path(ref) == out / "merged" and ref.is_current()
    with pytest.raises(FileNotFoundError, match="missing"):
        OutputPath.of(out / "missing")


def test_gpu_preset_does_not_retry_oom() -> None:
    class OutOfMemoryError(RuntimeError):
        pass

    assert is_cuda_oom(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_cuda_oom(RuntimeError("NCCL timeout"))
