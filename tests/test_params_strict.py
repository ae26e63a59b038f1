"""No parameter is ignored: an unknown key is refused, with a suggestion, for every flow and every way of starting it
(``medtune run --set``, a recipe file, a deployment run started through the API and executed like a worker does);
``--set`` edits nested and list parameters; what can be checked is checked before the run starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.params import build_params
from flows.registry import FLOWS, load_flow
from medtune_core.errors import MedtuneError

REPO = Path(__file__).resolve().parent.parent
ALL_FLOWS = sorted(FLOWS)


def _cli(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.mark.parametrize("flow_name", ALL_FLOWS)
def test_unknown_key_on_the_command_line_is_refused_with_a_suggestion(flow_name: str, tmp_path: Path) -> None:
    result = _cli("run", flow_name, "--set", f"output_dir={tmp_path}", "--set", "output_dri=x")
    assert result.exit_code == 2, result.output
    assert "unknown parameter 'output_dri' (did you mean 'output_dir'?)" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("flow_name", ALL_FLOWS)
def test_unknown_key_in_a_recipe_is_refused_naming_file_and_line(flow_name: str, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'out'}\n# the budget\nbudjet: 1\n", encoding="utf-8")
    result = _cli("run", flow_name, "--config", str(recipe))
    assert result.exit_code == 2, result.output
    assert f"{recipe}:3: budjet: unknown parameter 'budjet'" in result.output
    if "budget" in load_flow(flow_name)[1].model_fields:
        assert "(did you mean 'budget'?)" in result.output


def test_the_seeds_flag_names_point_at_ours() -> None:
    _, model = load_flow("data-synthesis")
    with pytest.raises(MedtuneError, match=r"unknown parameter 'test_cost' \(did you mean 'pilot'\?\)"):
        build_params(model, None, ["mode=llm", "test_cost=5"])
    with pytest.raises(MedtuneError, match=r"unknown parameter 'budjet' \(did you mean 'budget'\?\)"):
        build_params(model, None, ["budjet=1"])


def test_a_malformed_set_value_names_the_key_on_one_line() -> None:
    _, model = load_flow("data-synthesis")
    with pytest.raises(MedtuneError) as caught:
        build_params(model, None, ['prices={"my-model": {"input": 0.5, "output" 1.5}}'])
    message = str(caught.value)
    assert message.startswith('--set prices: cannot read the value \'{"my-model"') and "\n" not in message
    result = _cli("run", "data-synthesis", "--set", "prices={a: [1, 2}")
    assert result.exit_code == 2 and "--set prices:" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_set_reaches_into_lists_and_options_starting_from_the_flows_defaults() -> None:
    _, model = load_flow("rlhf-training")
    default = model()
    params = build_params(model, None, ["stages.1.settings.beta=0.2", "safety.limit=2"])
    assert [s.stage for s in params.stages] == [s.stage for s in default.stages]
    assert params.stages[1].settings["beta"] == 0.2
    assert params.stages[1].settings["max_steps"] == default.stages[1].settings["max_steps"]
    assert params.stages[0].settings == default.stages[0].settings
    # the other safety settings stay the flow's, not the options class's bare defaults
    assert params.safety.limit == 2 and params.safety.max_new_tokens == default.safety.max_new_tokens
    with pytest.raises(MedtuneError, match=r"--set stages.5.settings.beta: stages has 2 items, no index 5"):
        build_params(model, None, ["stages.5.settings.beta=0.2"])
    with pytest.raises(MedtuneError, match=r"stages is a list: use an index"):
        build_params(model, None, ["stages.sft.settings.beta=0.2"])


def test_a_recipe_partial_mapping_keeps_the_flows_other_defaults(tmp_path: Path) -> None:
    _, model = load_flow("rlhf-training")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("params:\n  safety:\n    limit: 1\n", encoding="utf-8")
    params = build_params(model, recipe, [])
    assert params.safety.limit == 1 and params.safety.max_new_tokens == model().safety.max_new_tokens


def test_paths_and_urls_are_checked_before_the_run(tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x", encoding="utf-8")
    result = _cli("run", "prepare-data", "--set", f"output_dir={a_file}")
    assert result.exit_code == 2 and f"output_dir: {a_file} is a file, not a folder" in result.output
    result = _cli("run", "prepare-data", "--set", f"inputs=[{tmp_path / 'missing.jsonl'}]", "--set", "output_dir=o")
    assert result.exit_code == 2 and f"inputs.0: {tmp_path / 'missing.jsonl'} does not exist" in result.output
    result = _cli("run", "eval-driven-recall", "--set", "base_url=localhost:8000", "--set", "backend=openai-api")
    assert result.exit_code == 2 and "base_url: 'localhost:8000' is not an http(s) URL" in result.output
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("output_dir: out\nmode: [seed\n", encoding="utf-8")
    result = _cli("run", "prepare-data", "--config", str(bad_yaml))
    assert result.exit_code == 2 and f"{bad_yaml}:3: not valid YAML" in result.output, result.output


# ------------------------------------------------------------------------------------ deployment runs


def _deployments() -> list[dict[str, Any]]:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text(encoding="utf-8"))
    return [d for d in spec["deployments"] if "params" in (d.get("parameters") or {})]


def _flow_of(entrypoint: str) -> Any:
    import importlib

    path, attr = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), attr)


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: f"{d['entrypoint'].split(':')[1]}/{d['name']}")
def test_deployment_run_with_an_unknown_parameter_fails_clearly(
    prefect_harness: None, deployment: dict[str, Any], tmp_path: Path
) -> None:
    """Through the API (as the UI's Custom Run does), then executed the way a worker executes it: refused by the
    server's schema check, and, where that check is off, Failed before any task with the did-you-mean message."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.flow_engine import run_flow

    flow_obj = _flow_of(deployment["entrypoint"])
    params = {**deployment["parameters"]["params"], "output_dir": str(tmp_path / "out"), "output_dri": "typo"}
    with get_client(sync_client=True) as client:
        enforced = flow_obj.to_deployment(name=f"strict-{deployment['name']}").apply()
        with pytest.raises(PrefectHTTPStatusError) as refused:
            client.create_flow_run_from_deployment(enforced, parameters={"params": params})
        assert "output_dri" in refused.value.response.text

        loose = flow_obj.to_deployment(name=f"loose-{deployment['name']}", enforce_parameter_schema=False).apply()
        flow_run = client.create_flow_run_from_deployment(loose, parameters={"params": params})
        state = run_flow(flow_obj, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
        assert state.is_failed(), state
        assert "unknown parameter 'output_dri' (did you mean 'output_dir'?)" in (state.message or ""), state.message
        assert not client.read_task_runs(flow_run_filter=_run_filter(flow_run.id)), (
            "a task ran with a parameter dropped"
        )
    assert not (tmp_path / "out").exists()


def _run_filter(flow_run_id: Any) -> Any:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))


def test_every_flow_parameter_model_is_strict() -> None:
    """Nested option groups too: an unknown key anywhere in a flow's parameters is an error."""
    for name in ALL_FLOWS:
        _, model = load_flow(name)
        schema = model.model_json_schema()
        objects = [schema, *schema.get("$defs", {}).values()]
        loose = [
            o.get("title")
            for o in objects
            if o.get("type") == "object" and o.get("properties") and o.get("additionalProperties") is not False
        ]
        assert not loose, f"{name}: {json.dumps(loose)} accept unknown keys"


@pytest.mark.parametrize(
    ("flow_name", "override", "expected"),
    [
        ("rlhf-training", "safety.limt=3", "safety.limt: unknown parameter 'limt' (did you mean 'limit'?)"),
        ("eval-driven-recall", "train_eval.max_step=3", "(did you mean 'max_steps'?)"),
        ("bailian-upload", "hyper_parameters.n_epoch=2", "(did you mean 'n_epochs'?)"),
        ("rlhf-training", "stages.0.stag=sft", "stages.0.stag: unknown parameter 'stag' (did you mean 'stage'?)"),
    ],
)
def test_unknown_keys_inside_option_groups_get_a_suggestion(flow_name: str, override: str, expected: str) -> None:
    with pytest.raises(MedtuneError) as caught:
        build_params(load_flow(flow_name)[1], None, [override])
    assert expected in str(caught.value)


def test_a_training_recipe_file_is_as_strict_as_the_parameters(tmp_path: Path) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(
        "base_model: embedded:smollm2-135m-instruct\nadaptor: qlora\n"
        "stages:\n  - stage: sft\n    train_files: [medtune_core/samples/sft_sharegpt_zh.jsonl]\n",
        encoding="utf-8",
    )
    model = load_flow("rlhf-training")[1]
    with pytest.raises(MedtuneError, match=rf"{recipe}: unknown parameter 'adaptor' \(did you mean 'adapter'\?\)"):
        build_params(model, None, [f"recipe={recipe}"])
    fixed = recipe.read_text(encoding="utf-8").replace("adaptor: qlora", "adapter: dora")
    recipe.write_text(fixed, encoding="utf-8")
    assert build_params(model, None, [f"recipe={recipe}"]).adapter.value == "dora"


def test_stage_overrides_by_name_still_work_with_strict_stages() -> None:
    """``--set sft.max_steps=2`` (the training flow's shortcut) next to ``--set sft.train_files=[...]``."""
    model = load_flow("rlhf-training")[1]
    sample = REPO / "medtune_core" / "samples" / "sft_sharegpt_en.jsonl"
    params = build_params(model, None, ["sft.max_steps=2", f"sft.train_files=[{sample}]"])
    sft = next(s for s in params.stages if s.stage == "sft")
    assert sft.settings["max_steps"] == 2 and sft.train_files == [sample]


def test_a_missing_medqa_folder_is_refused_before_the_run(tmp_path: Path) -> None:
    result = _cli(
        "run", "bailian-upload", "--set", f"source_dir={tmp_path / 'MedQA'}", "--set", f"output_dir={tmp_path}"
    )
    assert result.exit_code == 2 and f"source_dir: {tmp_path / 'MedQA'} does not exist" in result.output
