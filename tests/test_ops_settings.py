"""Operations settings without a server: the shared location, the pull step, what ``medtune deploy`` writes, and the
result storage taking effect in a process that imported Prefect before medtune (as a worker's flow run does)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.deploy import PREFECT_FILE, crash_after_seconds, deployment_file
from medtune_core.settings import shared_path
from tasks.prefect_env import deployment_env, enter_shared_location

REPO = Path(__file__).resolve().parent.parent


def test_shared_path_is_absolute_under_the_shared_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDTUNE_SHARED_DIR", raising=False)
    assert shared_path("out/x") == tmp_path / "out" / "x"
    monkeypatch.setenv("MEDTUNE_SHARED_DIR", str(tmp_path / "shared"))
    assert shared_path("out/x") == tmp_path / "shared" / "out" / "x"
    assert shared_path(Path("/abs/y")) == Path("/abs/y")


def test_the_pull_step_enters_the_shared_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("MEDTUNE_SHARED_DIR", str(tmp_path / "shared"))
    assert enter_shared_location(checkout=str(REPO)) == {"directory": str(tmp_path / "shared")}
    assert Path.cwd() == tmp_path / "shared" and str(REPO) in sys.path
    monkeypatch.delenv("MEDTUNE_SHARED_DIR")
    assert enter_shared_location(checkout=str(REPO)) == {"directory": str(REPO)}
    assert Path.cwd() == REPO


def test_deploy_writes_storage_and_heartbeats_into_every_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTUNE_RESULT_STORAGE", "s3-bucket/medtune-results")
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    monkeypatch.delenv("MEDTUNE_CRASH_AFTER_S", raising=False)
    spec = deployment_file(PREFECT_FILE, deployment_env())
    assert spec["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $MEDTUNE_CHECKOUT }}"}},
        {"tasks.prefect_env.enter_shared_location": {"checkout": "{{ $MEDTUNE_CHECKOUT }}"}},
    ]
    for deployment in spec["deployments"]:
        env = deployment["work_pool"]["job_variables"]["env"]
        assert env["PREFECT_DEFAULT_RESULT_STORAGE_BLOCK"] == "s3-bucket/medtune-results", deployment["name"]
        assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
        assert ":" in deployment["entrypoint"] and ".py" not in deployment["entrypoint"]
    assert crash_after_seconds() == 90
    monkeypatch.setenv("MEDTUNE_CRASH_AFTER_S", "10")
    assert crash_after_seconds() == 45, "never less than a heartbeat and 15 s"
    # without the setting, deployments carry no storage block (the worker's own setting then applies)
    monkeypatch.delenv("MEDTUNE_RESULT_STORAGE")
    assert "PREFECT_DEFAULT_RESULT_STORAGE_BLOCK" not in yaml.safe_dump(deployment_file(PREFECT_FILE, deployment_env()))


def test_a_flow_module_loaded_after_prefect_applies_the_result_storage(tmp_path: Path) -> None:
    """A worker's flow-run process imports Prefect (and reads its settings) before the flow's module."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(MEDTUNE_RESULT_STORAGE="local-file-system/shared-results", MEDTUNE_HOME=str(tmp_path))
    code = (
        "from prefect.settings import get_current_settings as s\n"
        "before = s().results.default_storage_block, s().results.persist_by_default\n"
        "import flows.prepare_data\n"
        "r = s().results\n"
        "print(before, r.default_storage_block, r.persist_by_default, r.local_storage_path)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [
        "(None,",
        "False)",
        "local-file-system/shared-results",
        "True",
        str(tmp_path / "results"),
    ]


def test_serve_without_a_server_says_what_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), MEDTUNE_HOME=str(tmp_path / "home"))
    cmd = [sys.executable, "-m", "flows.cli", "serve"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "medtune serve needs a running Prefect server" in out.stderr and "PREFECT_API_URL=" in out.stderr


def test_placement_on_a_server_without_the_cuda_deployment(prefect_harness: None) -> None:
    """``medtune run`` (an ephemeral server, no deployments): auto and cpu train here, cuda-pool refuses at once."""
    from prefect import flow

    from medtune_core.errors import MedtuneError
    from tasks.dispatch import choose_placement

    @flow
    def decide(device: str) -> tuple[str | None, str]:
        placement = choose_placement(device, "train-stage/missing")
        return placement.deployment, placement.reason

    assert decide("auto") == (None, "device=auto: no deployment train-stage/missing; training here")
    assert decide("cpu")[0] is None
    with pytest.raises(MedtuneError, match="no deployment train-stage/missing"):
        decide("cuda-pool")
