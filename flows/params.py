"""From a YAML recipe and ``--set`` overrides to a flow's validated parameter model, with errors a user can act on.

``--set`` takes ``dotted.path=value``: the value is read as YAML (``3`` an int, ``[a, b]`` a list, ``{k: v}`` a
mapping, ``x`` a string); a number in the path indexes a list (``stages.0.settings.max_steps=2``). Overrides are
deep-merged into the recipe, and a path into a field the recipe does not set starts from that field's default
(``safety.limit=4`` keeps the other safety settings of the flow's default, ``stages.1.settings.beta=0.2`` edits the
default second stage). Every problem is reported at once, one line each, naming the recipe file and line or the
``--set`` that caused it; nothing here prints a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from medtune_core.errors import MedtuneError
from medtune_core.params import unknown_key_message

#: Longest offending text quoted in one error line.
SHOWN = 80


def _shown(text: Any) -> str:
    one_line = " ".join(str(text).split())
    return one_line if len(one_line) <= SHOWN else one_line[: SHOWN - 1] + "…"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The parser's own words, on one line: ``expected ',' or '}', but got '<scalar>' (column 12)``."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (column {mark.column + 1})" if mark is not None else problem


def parse_overrides(pairs: list[str]) -> list[tuple[list[str], Any, str]]:
    """``a.b=value`` texts → ``(path, value, text)``; a malformed one raises naming its key and text."""
    parsed = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise MedtuneError(f"--set {_shown(pair)!r}: expected key=value (e.g. --set output_dir=out/run1)")
        path = key.split(".")
        if any(not part for part in path):
            raise MedtuneError(f"--set {key}: empty part in the dotted key {key!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise MedtuneError(f"--set {key}: cannot read the value {_shown(raw)!r}: {_yaml_problem(exc)}") from None
        parsed.append((path, value, pair))
    return parsed


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: mappings merge key by key, anything else (lists included) replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def field_default(model: type[BaseModel], name: str) -> Any:
    """The JSON form of a field's default (factories called), or None when it has none."""
    field = model.model_fields.get(name)
    if field is None or field.is_required():
        return None
    try:
        value = field.get_default(call_default_factory=True, validated_data={})
        return TypeAdapter(field.annotation).dump_python(value, mode="json")
    except Exception:  # a default that has no JSON form cannot be edited by path: start from nothing
        return None


def set_path(data: dict[str, Any], path: list[str], value: Any, model: type[BaseModel], text: str) -> None:
    """Put ``value`` at ``path`` inside ``data``, starting from the field's default where the path is new."""
    head = path[0]
    if len(path) > 1 and head not in data:
        default = field_default(model, head)
        data[head] = default if isinstance(default, dict | list) else {}
    node: Any = data
    for depth, part in enumerate(path[:-1]):
        node = _child(node, part, path[depth + 1], path[: depth + 1], text)
    _assign(node, path[-1], value, path, text)


def _index(node: list[Any], part: str, where: list[str], text: str) -> int:
    if not part.lstrip("-").isdigit():
        raise MedtuneError(f"--set {text.partition('=')[0]}: {'.'.join(where)} is a list: use an index, e.g. .0.")
    index = int(part)
    if not -len(node) <= index <= len(node):
        raise MedtuneError(f"--set {text.partition('=')[0]}: {'.'.join(where)} has {len(node)} items, no index {index}")
    return index


def _child(node: Any, part: str, next_part: str, where: list[str], text: str) -> Any:
    empty: Any = [] if next_part.isdigit() else {}
    if isinstance(node, list):
        index = _index(node, part, where[:-1] or where, text)
        if index == len(node):
            node.append(empty)
        elif not isinstance(node[index], dict | list):
            node[index] = empty
        return node[index]
    if isinstance(node, dict):
        if not isinstance(node.get(part), dict | list):
            node[part] = empty
        return node[part]
    raise MedtuneError(f"--set {text.partition('=')[0]}: {'.'.join(where[:-1])} is not a mapping or a list")


def _assign(node: Any, part: str, value: Any, path: list[str], text: str) -> None:
    if isinstance(node, list):
        index = _index(node, part, path[:-1], text)
        if index == len(node):
            node.append(value)
        else:
            node[index] = value
    else:
        node[part] = value


# ---------------------------------------------------------------------------------------------- recipes


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Line (1-based) of every mapping key of a YAML document, by its path of keys (list items by index)."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, child in node.value:
                sub = (*path, str(key.value))
                lines[sub] = key.start_mark.line + 1
                walk(child, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, child in enumerate(node.value):
                lines[(*path, str(i))] = child.start_mark.line + 1
                walk(child, (*path, str(i)))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


class Recipe:
    """A recipe file's parameters and where each key sits in it (for error lines)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        self.lines: dict[tuple[str, ...], int] = {}
        self.prefix: tuple[str, ...] = ()
        if path is None:
            return
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MedtuneError(f"{path}: recipe file not found") from None
        except (IsADirectoryError, UnicodeDecodeError) as exc:
            raise MedtuneError(f"{path}: cannot read the recipe: {exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise MedtuneError(f"{where}: not valid YAML: {_yaml_problem(exc)}") from None
        loaded = {} if loaded is None else loaded
        if not isinstance(loaded, dict):
            raise MedtuneError(f"{path}: expected a mapping of parameters at the top level")
        if set(loaded) == {"params"} and isinstance(loaded["params"], dict):
            self.prefix = ("params",)
            loaded = loaded["params"]
        self.data = loaded
        self.lines = _key_lines(text)

    def line_of(self, loc: tuple[str, ...]) -> int | None:
        """The line of the deepest key of ``loc`` that the file itself has."""
        for end in range(len(loc), 0, -1):
            line = self.lines.get((*self.prefix, *loc[:end]))
            if line is not None:
                return line
        return None


# ----------------------------------------------------------------------------------------------- errors


def _model_at(model: Any, loc: tuple[str, ...]) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``loc`` inside ``model`` (through lists, dicts, Optional)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current, part)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any, part: str) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(part)
        return field.annotation if field is not None else None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (list, tuple, set, frozenset) and args and part.lstrip("-").isdigit():
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    for arg in args:  # Optional[X], X | None, Annotated[X, ...]
        found = _unwrap(arg, part)
        if found is not None:
            return found
    return None


def _message(error: dict[str, Any], model: type[BaseModel] | None = None) -> tuple[tuple[str, ...], str]:
    """One pydantic error → (the field's path, a message a user can act on)."""
    loc = tuple(str(p) for p in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1]) if model is not None else None
        if owner is not None:
            return loc, unknown_key_message(loc[-1], sorted(owner.model_fields), getattr(owner, "SYNONYMS", None))
        return loc, f"unknown parameter {loc[-1]!r}"
    if kind == "unknown_parameter":
        keys = error.get("ctx", {}).get("keys") or []
        return (*loc, str(keys[0])) if len(keys) == 1 else loc, error["msg"]
    message = error["msg"].removeprefix("Value error, ")
    if kind != "missing" and "input" in error and not isinstance(error["input"], dict | list):
        shown = _shown(repr(error["input"]))
        if str(error["input"]) not in message:
            message += f" (got {shown})"
    return loc, message


def describe_validation_error(
    exc: ValidationError, recipe: Recipe | None = None, model: type[BaseModel] | None = None
) -> str:
    """Every problem of ``exc`` on its own line: ``recipe.yaml:3: budjet: unknown parameter ...``."""
    lines = []
    for error in exc.errors():
        loc, message = _message(error, model)
        field = ".".join(loc)
        where = ""
        if recipe is not None and recipe.path is not None:
            line = recipe.line_of(loc)
            where = f"{recipe.path}:{line}: " if line is not None else ""
        lines.append(f"{where}{field + ': ' if field else ''}{message}")
    return "\n".join(dict.fromkeys(lines))


def build_params(model: type[BaseModel], config: Path | None, overrides: list[str]) -> Any:
    """Validate a recipe plus ``--set`` overrides against a flow's parameter model; raise listing every problem."""
    recipe = Recipe(config)
    data = dict(recipe.data)
    for path, value, text in parse_overrides(overrides):
        set_path(data, path, value, model, text)
    return validate_params(model, data, recipe)


def validate_params(model: type[BaseModel], data: dict[str, Any], recipe: Recipe | None = None) -> Any:
    """``data`` (partial option mappings over the flow's defaults) validated; a :class:`MedtuneError` listing every
    problem otherwise."""
    try:
        return model.model_validate(_over_defaults(model, data))
    except ValidationError as exc:
        raise MedtuneError(describe_validation_error(exc, recipe, model)) from None


def _over_defaults(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """A partial mapping for a field whose default is a mapping keeps the default's other keys.

    ``safety: {limit: 4}`` in a recipe means "the flow's safety settings, with limit 4", not "the safety model's
    bare defaults with limit 4": what a user leaves out stays what the flow would have used.
    """
    merged = dict(data)
    for key, value in data.items():
        if isinstance(value, dict):
            default = field_default(model, key)
            if isinstance(default, dict) and default:
                merged[key] = deep_merge(default, value)
    return merged
