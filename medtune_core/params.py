"""The base of every parameter model a user fills in (flow parameters, recipe sections, option groups).

:class:`StrictParams` makes three promises that a plain pydantic model does not:

* **No parameter is ignored.** An unknown key is an error naming the key and the closest known one
  (``budjet`` → ``budget``; names people carry over from elsewhere, like the original ``test_cost`` for ``pilot``,
  are listed in a model's ``SYNONYMS``). The check runs wherever the model validates: ``medtune run`` (recipe and
  ``--set``), ``make demo``, and a deployment run started from the UI or the API.
* **The published schema shows the defaults the flow applies.** A field whose default comes from a factory
  (a list of stages, the agents, an options object with its own settings) has that value written into the JSON
  schema, so Prefect's Custom Run form starts from exactly what a Quick Run runs.
* **What can be checked before a run starts, is.** :data:`OutputDir`, :data:`ExistingPath` and :data:`HttpUrl`
  are field types that refuse a folder that is a file, an input that does not exist, or an endpoint that is not
  an http(s) URL, at validation time instead of half way through a paid run.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, GetJsonSchemaHandler, TypeAdapter, model_validator
from pydantic_core import PydanticCustomError


def did_you_mean(key: str, known: list[str], synonyms: dict[str, str] | None = None) -> str | None:
    """The known name ``key`` most likely meant: a listed synonym, else the closest spelling (or None)."""
    if synonyms and key in synonyms:
        return synonyms[key]
    normalized = key.strip().lower().replace("-", "_")
    if normalized in known:
        return normalized
    close = difflib.get_close_matches(normalized, known, n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_key_message(key: str, known: list[str], synonyms: dict[str, str] | None = None) -> str:
    """``unknown parameter 'budjet' (did you mean 'budget'?)`` or, with no close name, the list of known ones."""
    guess = did_you_mean(key, known, synonyms)
    if guess:
        return f"unknown parameter {key!r} (did you mean {guess!r}?)"
    return f"unknown parameter {key!r} (known: {', '.join(sorted(known))})"


def _publish_factory_defaults(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """Write each factory-made default into the field's JSON schema (pydantic leaves those out)."""
    properties = schema.get("properties", {})
    for name, field in cls.model_fields.items():
        if field.default_factory is None or field.exclude:
            continue
        key = field.alias or name
        if key not in properties:
            continue
        try:
            value = field.get_default(call_default_factory=True, validated_data={})
            properties[key]["default"] = TypeAdapter(field.annotation).dump_python(value, mode="json")
        except Exception:  # a default that cannot be shown is left out, as pydantic would
            continue


class StrictParams(BaseModel):
    """A parameter model that rejects unknown keys with a suggestion and publishes every default it applies."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_publish_factory_defaults)

    #: Names people type for a field of this model (other tools' flags, older names) → the field to suggest.
    SYNONYMS: ClassVar[dict[str, str]] = {}

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        """An options object whose default differs from its class's defaults is inlined with the field's values
        as its properties' defaults: a form built from the nested properties shows what the flow applies too."""
        schema = handler(core_schema)
        own = handler.resolve_ref_schema(schema)
        for name, prop in own.get("properties", {}).items():
            default = prop.get("default")
            ref = prop.get("$ref") or next((s["$ref"] for s in prop.get("allOf", []) if "$ref" in s), None)
            if not (isinstance(default, dict) and ref):
                continue
            try:
                nested = copy.deepcopy(handler.resolve_ref_schema({"$ref": ref}))
            except LookupError:
                continue
            for key, value in default.items():
                if key in nested.get("properties", {}):
                    nested["properties"][key]["default"] = value
            extra = {k: v for k, v in prop.items() if k not in ("$ref", "allOf")}
            own["properties"][name] = {**nested, **extra}
        return schema

    @classmethod
    def known_keys(cls) -> list[str]:
        keys = set(cls.model_fields)
        for field in cls.model_fields.values():
            if isinstance(field.alias, str):
                keys.add(field.alias)
            if isinstance(field.validation_alias, str):
                keys.add(field.validation_alias)
        return sorted(keys)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = cls.known_keys()
            unknown = [k for k in data if not isinstance(k, str) or k not in known]
            if unknown:
                problems = "; ".join(unknown_key_message(str(k), known, cls.SYNONYMS) for k in unknown)
                raise PydanticCustomError("unknown_parameter", "{problems}", {"problems": problems, "keys": unknown})
        return data


# ------------------------------------------------------------------------------------- checked field types


def _output_dir(path: Path) -> Path:
    """A folder to write into: it may not exist yet, but neither it nor a parent may be a file."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                what = "is" if candidate == path else f"is inside {candidate}, which is"
                raise PydanticCustomError(
                    "not_a_folder", "{path} {what} a file, not a folder", {"path": str(path), "what": what}
                )
            break
    return path


def _existing_path(path: Path) -> Path:
    if not path.exists():
        raise PydanticCustomError("path_missing", "{path} does not exist", {"path": str(path)})
    return path


def check_http_url(url: str) -> str:
    """An http(s) URL with a host (``http://127.0.0.1:8000/v1``); the text is kept as given."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError("not_an_http_url", "'{url}' is not an http(s) URL like https://host/v1", {"url": url})
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise PydanticCustomError("not_an_http_url", "'{url}' has an invalid port", {"url": url}) from None
    return url.strip()


#: A folder the flow writes into (checked: not a file, not under a file).
OutputDir = Annotated[Path, AfterValidator(_output_dir)]
#: An input file or folder that must exist when the run starts.
ExistingPath = Annotated[Path, AfterValidator(_existing_path)]
#: An http(s) endpoint URL.
HttpUrl = Annotated[str, AfterValidator(check_http_url)]
