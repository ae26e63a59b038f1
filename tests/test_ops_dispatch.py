"""``rlhf-training`` when the CUDA pool has no worker, on a real Prefect server (``tests/e2e_server.py``).

As docs/OPERATIONS.md says: ``device=auto`` trains in the flow run's own process, says so in a log line and in the
``rlhf-training-device`` artifact; ``device=cuda-pool`` fails once no worker has taken the stage within
``MEDTUNE_CUDA_START_TIMEOUT_S``, naming the pool and the command that starts its worker, and cancels the child.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from medtune_core.models.tiny import tiny_model_path
from tests.e2e_forms import QUICK, form_parameters

if TYPE_CHECKING:
    from tests.e2e_server import PrefectStack

pytest_plugins = ["tests.e2e_server"]
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 15
RUN_TIMEOUT_S = 360


def test_no_cuda_worker_auto_trains_here_and_cuda_pool_fails_after_a_bounded_wait(prefect_stack: PrefectStack) -> None:
    stack = prefect_stack
    deployments = stack.deployments()
    stack.copy_deployment(deployments["train-stage/cuda"], "nobody", "ops-nobody")  # a pool no worker serves
    rlhf = deployments["rlhf-training/default"]
    work = stack.work / "dispatch"
    sft = str(REPO / "medtune_core" / "samples" / "sft_sharegpt_en.jsonl")
    common: dict[str, Any] = {
        "base_model": str(tiny_model_path()),
        "stages": [{"stage": "sft", "train_files": [sft], "settings": QUICK}],
        "cuda_deployment": "train-stage/nobody",
        "safety_eval": False,
    }
    auto = stack.run_deployment(rlhf, form_parameters(rlhf, {**common, "device": "auto", "output_dir": str(work)}))
    env = {**rlhf["job_variables"].get("env", {}), "MEDTUNE_CUDA_START_TIMEOUT_S": str(START_TIMEOUT_S)}
    pool_params = form_parameters(rlhf, {**common, "device": "cuda-pool", "output_dir": str(work / "pool")})
    strict = stack.run_deployment(rlhf, pool_params, job_variables={"env": env})
    final = stack.wait_final([auto["id"], strict["id"]], timeout=RUN_TIMEOUT_S)

    # cuda-pool: failed after the bounded wait, saying which pool and how to start its worker
    run = final[strict["id"]]
    assert run["state_type"] == "FAILED", stack.explain(run)
    logs = stack.run_logs(strict["id"])
    assert "no worker of pool ops-nobody took child run" in logs, stack.explain(run)
    assert "`prefect worker start --pool ops-nobody`" in logs
    waited = datetime.fromisoformat(run["end_time"]) - datetime.fromisoformat(run["start_time"])
    assert waited.total_seconds() < START_TIMEOUT_S + 120, "bounded wait"
    children = stack.post("/flow_runs/filter", {"work_pools": {"name": {"any_": ["ops-nobody"]}}})
    assert children and {c["state_type"] for c in children} == {"CANCELLED"}, "the orphan child is cancelled"

    # auto: trained in the run's own process, said in the log and in an artifact
    run = final[auto["id"]]
    assert run["state_type"] == "COMPLETED", stack.explain(run)
    assert "no worker of pool ops-nobody is online, so the stages train HERE" in stack.run_logs(auto["id"])
    artifacts = stack.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [auto["id"]]}}})
    notes = [a for a in artifacts if a["key"] == "rlhf-training-device"]
    assert notes and "Stages trained in this process" in notes[0]["data"]
    assert (work / "1-sft" / "merged" / "config.json").is_file()
