"""The flows medtune knows, by name: what ``medtune run NAME`` and the deployments look up.

Entries are import strings so that listing flows or parsing the command line imports no heavy module.
A flow module adds itself with one line here.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from medtune_core.errors import MedtuneError


@dataclass(frozen=True)
class FlowSpec:
    name: str
    target: str  # "module:attribute" of the Prefect flow object
    description: str


FLOWS: dict[str, FlowSpec] = {
    spec.name: spec
    for spec in [
        FlowSpec("prepare-data", "flows.prepare_data:prepare_data", "Validate and convert datasets, with manifests"),
        FlowSpec(
            "data-synthesis",
            "flows.data_synthesis:data_synthesis",
            "SFT data for the five health agents (templates and/or an LLM), deduplicated, with cost control",
        ),
        FlowSpec(
            "eval-driven-recall",
            "flows.eval_driven_recall:eval_driven_recall",
            "Recall pool rows like a benchmark's questions: leakage guard, decontamination, random mix, control",
        ),
        FlowSpec(
            "rlhf-training",
            "flows.rlhf_training:rlhf_training",
            "PT/SFT/RM/DPO/ORPO/KTO/GRPO/RLOO stages chained on one base model, cached per stage, CUDA pool aware",
        ),
        FlowSpec(
            "bailian-upload",
            "flows.bailian_upload:bailian_upload",
            "MedQA → Bailian SFT files, split, cost estimate, upload and fine-tune job (dry run by default)",
        ),
    ]
}


def get_spec(name: str) -> FlowSpec:
    try:
        return FLOWS[name]
    except KeyError:
        raise MedtuneError(f"unknown flow {name!r}; known flows: {', '.join(sorted(FLOWS))}") from None


def load_flow(name: str) -> tuple[Any, type[BaseModel]]:
    """The flow object and its parameter model (the annotation of its single ``params`` argument)."""
    spec = get_spec(name)
    module_name, attr = spec.target.split(":")
    flow_obj = getattr(importlib.import_module(module_name), attr)
    params_model = inspect.signature(flow_obj.fn).parameters["params"].annotation
    if isinstance(params_model, str):
        params_model = flow_obj.fn.__annotations__["params"]
        params_model = eval(params_model, vars(importlib.import_module(module_name)))
    return flow_obj, params_model
