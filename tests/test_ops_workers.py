"""Two "machines" sharing only a result-storage block and the shared location, on a real Prefect server.

Each machine is its own ``PREFECT_HOME``, ``MEDTUNE_HOME`` and working folder, with ``MEDTUNE_RESULT_STORAGE``
and ``MEDTUNE_SHARED_DIR`` in its workers' environment only (the deployments carry no storage setting: the flow
run's own process applies it). Machine A runs ``rlhf-training`` on a CPU pool, its stages go to the CUDA pool's
worker on machine B; A dies (``kill -9``) after the first stage; the heartbeat automation marks the run Crashed;
Retry from the UI lands on B's CPU worker, the first stage comes back Cached and the models are readable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from medtune_core.models.tiny import tiny_model_path
from tests.e2e_forms import QUICK, form_parameters

if TYPE_CHECKING:
    from tests.e2e_server import PrefectStack

pytest_plugins = ["tests.e2e_server"]
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "medtune_core" / "samples"
BLOCK = "medtune-ops-shared"
RUN_TIMEOUT_S = 360


def wait_for(what: str, check: Callable[[], Any], timeout: float, explain: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s\n{explain()}"
        time.sleep(1)
    return value


@pytest.fixture(scope="module")
def machines(prefect_stack: PrefectStack) -> SimpleNamespace:
    stack = prefect_stack
    ops = stack.root / "ops"
    shared, results = ops / "shared", ops / "shared-results"
    shared.mkdir(parents=True)
    results.mkdir(parents=True)
    stack.python(
        "from prefect.filesystems import LocalFileSystem\n"
        f"LocalFileSystem(basepath={str(results)!r}).save({BLOCK!r}, overwrite=True)"
    )
    deployments = stack.deployments()
    parent = stack.copy_deployment(deployments["rlhf-training/default"], "ops", "ops-cpu")
    stack.copy_deployment(deployments["train-stage/cuda"], "ops", "ops-cuda")
    assert "PREFECT_DEFAULT_RESULT_STORAGE_BLOCK" not in str(parent["job_variables"])
    extra = {"MEDTUNE_RESULT_STORAGE": f"local-file-system/{BLOCK}", "MEDTUNE_SHARED_DIR": str(shared)}
    return SimpleNamespace(
        stack=stack, shared=shared, results=results, parent=parent, a=stack.machine_env("a", **extra),
        b=stack.machine_env("b", **extra),
    )  # fmt: skip


def train_stage_runs(stack: PrefectStack, run_id: str, run_count: int) -> list[dict[str, Any]]:
    return [
        t
        for t in stack.task_runs(run_id)
        if t["name"].startswith("train-stage") and t["flow_run_run_count"] == run_count
    ]


def test_a_killed_machine_crashes_its_run_and_retry_on_the_other_machine_reuses_its_cache(
    machines: SimpleNamespace,
) -> None:
    stack = machines.stack
    (env_a, work_a), (env_b, work_b) = machines.a, machines.b
    stack.worker("ops-a-cpu", "ops-cpu", env_a, work_a)
    stack.worker("ops-b-cuda", "ops-cuda", env_b, work_b)

    sft = str(SAMPLES / "sft_sharegpt_en.jsonl")
    stage = {"stage": "sft", "train_files": [sft], "settings": QUICK}
    settings = {
        "base_model": str(tiny_model_path()),
        "stages": [stage, {**stage, "settings": {**QUICK, "max_steps": 3}}],
        "device": "cuda-pool",
        "cuda_deployment": "train-stage/ops",
        "output_dir": "ops-rlhf",  # relative: resolved in the shared location, not in a worker's folder
        "safety_eval": False,
    }
    run_id = stack.run_deployment(machines.parent, form_parameters(machines.parent, settings))["id"]

    def explain() -> str:
        return stack.explain(stack.flow_run(run_id))

    # machine A dies once the first stage is done (its result is in the shared storage block) and the second runs
    wait_for(
        "first stage completed on A, second running",
        lambda: [t["state_type"] for t in train_stage_runs(stack, run_id, 1)] == ["COMPLETED", "RUNNING"],
        RUN_TIMEOUT_S,
        explain,
    )
    assert stack.flow_run(run_id)["state_type"] == "RUNNING", explain()
    stack.kill9("ops-a-cpu", f"MEDTUNE_HOME={env_a['MEDTUNE_HOME']}")
    killed = time.monotonic()
    crashed = wait_for(
        "run marked Crashed after its machine died",
        lambda: (run := stack.flow_run(run_id))["state_type"] in ("CRASHED", "COMPLETED", "FAILED") and run,
        stack.crash_after_s + 60,
        explain,
    )
    assert crashed["state_type"] == "CRASHED", explain()
    assert "heartbeat" in crashed["state"]["message"]
    assert time.monotonic() - killed < stack.crash_after_s + 60

    # Retry from the UI: only machine B has a CPU worker now
    stack.worker("ops-b-cpu", "ops-cpu", env_b, work_b)
    assert stack.retry_like_ui(run_id)["status"] == "ACCEPT"
    final = stack.wait_final([run_id], timeout=RUN_TIMEOUT_S)[run_id]
    assert final["state_type"] == "COMPLETED", explain()
    assert final["run_count"] == 2
    retried = stack.task_runs_settled(run_id, run_count=2, expected=2)
    states = [t["state_name"] for t in retried if t["name"].startswith("train-stage")]
    assert states == ["Cached", "Completed"], states
    assert "stages train in CUDA pool ops-cuda" in stack.run_logs(run_id)
    # the task run the dead attempt left Running was set Crashed when the retry started
    orphans = [(t["state_type"], t["state"]["message"]) for t in train_stage_runs(stack, run_id, 1)]
    assert [state for state, _ in orphans] == ["COMPLETED", "CRASHED"], orphans
    assert "process died" in orphans[1][1]

    # Every stage ran on B's CUDA worker and wrote to the shared location, where the parent read it
    children = stack.post("/flow_runs/filter", {"work_pools": {"name": {"any_": ["ops-cuda"]}}})
    assert len(children) >= 2 and {c["state_type"] for c in children} == {"COMPLETED"}
    for key in ("1-sft", "2-sft"):
        merged = machines.shared / "ops-rlhf" / key / "merged"
        assert (merged / "config.json").is_file(), key
        assert (machines.shared / "ops-rlhf" / key / "result.json").is_file(), key
    for folder in (work_a, work_b, REPO):
        assert not (folder / "ops-rlhf").exists(), f"written relative to {folder}"
    # The results (the cache) are in the shared block, not in either machine's own storage
    assert any(machines.results.iterdir())
    for env in (env_a, env_b):
        local = Path(env["MEDTUNE_HOME"]) / "results"
        assert not local.exists() or not any(local.iterdir()), f"results kept locally in {local}"
