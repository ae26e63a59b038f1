"""End to end on a real Prefect server: every deployment run through the REST API as the UI does, then resume.

The stack (``tests/e2e_server.py``): ``prefect server start`` (SQLite), ``medtune deploy``, a process worker on
``medtune-cpu`` and one on ``medtune-cuda``. Runs are created with ``POST /deployments/{id}/create_flow_run``
and the body of the UI's Run dialog; the parameters are the deployment's own (what the form is pre-filled
with) plus small settings, checked against the deployment's ``parameter_openapi_schema`` before sending.
"""

from __future__ import annotations

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
SAMPLES = REPO / "medtune_core" / "samples"
RUN_TIMEOUT_S = 420


def small_settings(work: Path) -> dict[str, dict[str, Any]]:
    """Per deployment: output under ``work`` and sizes that finish in seconds on CPU."""
    tiny = str(tiny_model_path())
    sft = str(SAMPLES / "sft_sharegpt_en.jsonl")
    return {
        "prepare-data/default": {
            "inputs": [sft, str(SAMPLES / "preference_en.jsonl")],
            "output_dir": str(work / "prepare-data"),
        },
        "data-synthesis/default": {"num_samples": 3, "output_dir": str(work / "synthesis-manual")},
        "data-synthesis/nightly": {"num_samples": 3, "output_dir": str(work / "synthesis-nightly")},
        "eval-driven-recall/default": {"output_dir": str(work / "recall")},
        "rlhf-training/default": {
            "base_model": tiny,
            "stages": [{"stage": "sft", "train_files": [sft], "settings": QUICK}],
            "output_dir": str(work / "rlhf"),
            # the stage goes to the CUDA pool's worker through the train-stage/cuda deployment
            "device": "cuda-pool",
            "cuda_deployment": "train-stage/cuda",
        },
        "train-stage/cuda": {
            "stage": "sft",
            "config": {"model": tiny, "train_files": [sft], "output_dir": str(work / "train-stage"), **QUICK},
            "merge": True,
        },
        "bailian-upload/default": {"output_dir": str(work / "bailian")},
    }


def test_every_deployment_completes_when_run_like_the_ui(prefect_stack: PrefectStack) -> None:
    stack = prefect_stack
    # medtune deploy's own (other e2e modules add copies on pools of their own)
    deployments = {
        k: d for k, d in stack.deployments().items() if d["work_pool_name"] in ("medtune-cpu", "medtune-cuda")
    }
    settings = small_settings(stack.work / "all")
    assert set(deployments) == set(settings), "a deployment without settings here (or one missing on the server)"
    assert deployments["train-stage/cuda"]["work_pool_name"] == "medtune-cuda"

    runs = {
        name: stack.run_deployment(deployments[name], form_parameters(deployments[name], settings[name]))
        for name in settings
    }
    final = stack.wait_final([r["id"] for r in runs.values()], timeout=RUN_TIMEOUT_S)

    failed = {name: final[r["id"]] for name, r in runs.items() if final[r["id"]]["state_type"] != "COMPLETED"}
    assert not failed, "\n\n".join(f"{name}: {stack.explain(run)}" for name, run in failed.items())
    # rlhf-training dispatched its stage to the CUDA pool: a second, completed train-stage run exists
    children = stack.post(
        "/flow_runs/filter", {"deployments": {"id": {"any_": [deployments["train-stage/cuda"]["id"]]}}}
    )
    assert len(children) == 2 and {c["state_type"] for c in children} == {"COMPLETED"}
    assert (stack.work / "all" / "rlhf" / "1-sft" / "merged").is_dir()


def test_retry_from_the_ui_resumes_with_earlier_tasks_cached(prefect_stack: PrefectStack) -> None:
    stack = prefect_stack
    work = stack.work / "resume"
    work.mkdir(parents=True)
    rows = (SAMPLES / "sft_sharegpt_en.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    good, bad = work / "good.jsonl", work / "bad.jsonl"
    good.write_text("".join(rows[:4]), encoding="utf-8")
    bad.write_text("".join(rows[4:8]) + '{"conversations": [{"from": "human"}]}\n', encoding="utf-8")
    out = work / "out"

    deployment = stack.deployments()["prepare-data/default"]
    params = form_parameters(deployment, {"inputs": [str(good), str(bad)], "output_dir": str(out), "policy": "strict"})
    run_id = stack.run_deployment(deployment, params)["id"]
    first = stack.wait_final([run_id], timeout=RUN_TIMEOUT_S)[run_id]
    assert first["state_type"] == "FAILED", stack.explain(first)
    assert "bad.jsonl:5" in stack.run_logs(run_id), stack.explain(first)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert any(name.startswith("good.") for name in before) and not any(n.startswith("bad.") for n in before)

    bad.write_text("".join(rows[4:8]), encoding="utf-8")
    answer = stack.retry_like_ui(run_id)
    assert answer["status"] == "ACCEPT", answer
    second = stack.wait_final([run_id], timeout=RUN_TIMEOUT_S)[run_id]
    assert second["state_type"] == "COMPLETED", stack.explain(second)
    assert second["run_count"] == 2

    # Task runs of the retry; the good file's come first (validate, convert), then the fixed file's.
    retried = stack.task_runs_settled(run_id, run_count=2, expected=4)
    states = [(t["name"].rsplit("-", 1)[0], t["state_name"]) for t in retried]
    assert [name for name, _ in states] == ["validate-dataset", "convert-dataset"] * 2, states
    (_, validate_good), (_, convert_good), *fixed = states
    assert validate_good == "Cached", states
    assert [state for _, state in fixed] == ["Completed", "Completed"], states
    assert convert_good == "Cached", states  # its output path counts by location in the key, not by contents
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert {k: after[k] for k in before} == before, "the good file's outputs are the first attempt's, untouched"
    assert any(name.startswith("bad.") for name in after)
