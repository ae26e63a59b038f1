"""The UI's Custom Run form shows what the flow applies: for every deployment of ``deployments/prefect.yaml`` the
defaults in the parameter schema Prefect publishes (as the form reads them: a field's own default, or the defaults of
an options object's properties) plus the deployment's parameters are exactly the parameters a Quick Run runs with."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.params import deep_merge

REPO = Path(__file__).resolve().parent.parent
NO_DEFAULT = object()


def _deployments() -> list[dict[str, Any]]:
    """Every deployment a person starts (``train-stage/cuda`` is started by ``rlhf-training`` with a full config)."""
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text(encoding="utf-8"))
    return [d for d in spec["deployments"] if not d["entrypoint"].endswith(":train_stage")]


def _flow(entrypoint: str) -> Any:
    path, attr = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), attr)


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref") or next((s["$ref"] for s in prop.get("allOf", []) if "$ref" in s), None)
    return defs[ref.rsplit("/", 1)[-1]] if ref else prop


def form_values(prop: dict[str, Any], defs: dict[str, Any], own_default_first: bool) -> Any:
    """What a form built from ``prop`` starts with. ``own_default_first``: the field's default when it has one
    (else its properties'); otherwise the properties' defaults wherever the field is an object with properties."""
    target = _resolve(prop, defs)
    if own_default_first and "default" in prop:
        return prop["default"]
    if target.get("properties"):
        values = {}
        for key, sub in target["properties"].items():
            value = form_values(sub, defs, own_default_first)
            if value is not NO_DEFAULT:
                values[key] = value
        return values
    return prop.get("default", target.get("default", NO_DEFAULT))


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: f"{d['entrypoint'].split(':')[1]}/{d['name']}")
def test_custom_run_form_defaults_are_the_quick_run_parameters(deployment: dict[str, Any]) -> None:
    from prefect.utilities.callables import parameter_schema

    flow_obj = _flow(deployment["entrypoint"])
    schema = parameter_schema(flow_obj).model_dump()
    defs = schema.get("definitions", {})
    given = (deployment.get("parameters") or {}).get("params")
    model = flow_obj.fn.__annotations__["params"]
    model = getattr(importlib.import_module(flow_obj.fn.__module__), model) if isinstance(model, str) else model
    quick = model.model_validate(given or {}).model_dump(mode="json")
    for own_first in (True, False):
        form = deep_merge(form_values(schema["properties"]["params"], defs, own_first), given or {})
        # what the form submits, validated, is what Quick Run runs; and the form shows every value it runs with
        assert model.model_validate(form).model_dump(mode="json") == quick
        missing = sorted(set(quick) - set(form))
        assert not missing, f"no default in the published schema for {missing}"
        assert {k: form[k] for k in quick} == quick
