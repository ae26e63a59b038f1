"""What the e2e tests send: the Run dialog's form parameters and training settings that finish in seconds.

Kept apart from ``tests/e2e_server.py`` (a pytest plugin, which test modules must not import themselves).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
from referencing import Registry
from referencing.jsonschema import DRAFT202012

#: Training settings that finish in seconds on CPU (with the tiny model); at 96 tokens most sample chats are too
#: long, and the few short ones are enough for two steps.
QUICK = {
    "max_steps": 2,
    "batch_size": 2,
    "max_length": 96,
    "save_steps": 1000,
    "report_to": [],
    "max_dropped_share": 0.9,
}


def form_parameters(deployment: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The deployment's parameters with ``overrides`` set in its ``params`` model, valid for its form schema.

    Every overridden field must be a field of the form (the schema's ``params`` definition), and the whole
    body must validate against the schema with its ``$ref``s resolved, as the UI checks it before sending.
    """
    schema = deployment["parameter_openapi_schema"]
    ref = schema["properties"]["params"]["$ref"]
    model = Registry().with_resource("urn:form", DRAFT202012.create_resource(schema)).resolver("urn:form")
    model = model.lookup(ref).contents
    unknown = set(overrides) - set(model["properties"])
    assert not unknown, f"{deployment['name']}: not fields of the form: {sorted(unknown)}"
    parameters = copy.deepcopy(deployment["parameters"])
    parameters.setdefault("params", {}).update(overrides)
    jsonschema.validate(parameters, schema)
    return parameters
