"""The ``medtune`` command line: validate and convert data, manage embedded models, run flows.

``medtune run FLOW`` validates the YAML recipe plus ``--set`` overrides against the flow's parameter
model before anything runs, runs the flow on the ephemeral Prefect server (or the one ``PREFECT_API_URL``
names) and prints, as its last line, one JSON object naming the run, its state and its outputs.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from flows.cli_common import fail, setup_logging, user_errors
from medtune_core.errors import MedtuneError

app = typer.Typer(help="medtune: fine-tuning factory for medical language models.", no_args_is_help=True)
models_app = typer.Typer(help="Embedded default models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

log = logging.getLogger("medtune")


# ----------------------------------------------------------------------------------------------- data


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Dataset files to check.")],
    fmt: Annotated[str | None, typer.Option("--format", help="Format name; default: detect.")] = None,
    policy: Annotated[str, typer.Option(help="strict: stop at the first bad row; skip: count bad rows.")] = "strict",
    rejects: Annotated[
        Path | None, typer.Option(help="With --policy skip: write bad rows here (one file per input: suffixed).")
    ] = None,
) -> None:
    """Check every row of each file; prints ``FILE: N rows, format F``."""
    from medtune_core.dataio import DatasetReader, Policy

    pol = Policy(policy)
    for i, path in enumerate(files):
        rejects_path = None
        if rejects is not None and pol is Policy.SKIP:
            rejects_path = rejects if len(files) == 1 else rejects.with_name(f"{rejects.stem}.{i}{rejects.suffix}")
        with user_errors(FileNotFoundError):
            reader = DatasetReader(path, fmt, policy=pol, rejects_path=rejects_path)
            for _ in reader:
                pass
        line = f"{path}: {reader.stats.rows} rows, format {reader.format.name}"
        if pol is Policy.SKIP:
            line += f", {reader.stats.rejected} rejected"
            if rejects_path is not None:
                line += f" (rejects: {rejects_path})"
        typer.echo(line)
        for reason, count in reader.stats.reasons.most_common(5):
            typer.echo(f"  {count} × {reason}")


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Input dataset.")],
    dst: Annotated[Path, typer.Argument(help="Output file (written atomically, with a manifest).")],
    to: Annotated[str, typer.Option("--to", help="Target format name (see `medtune formats`).")],
    src_format: Annotated[str | None, typer.Option("--from", help="Input format; default: detect.")] = None,
    policy: Annotated[str, typer.Option(help="strict or skip (bad rows go to OUT.rejects.jsonl).")] = "strict",
) -> None:
    """Convert a dataset into another format through the canonical record."""
    from medtune_core.dataio import convert_file

    with user_errors(FileNotFoundError):
        manifest = convert_file(src, dst, to, src_format=src_format, policy=policy)
    line = f"{dst}: {manifest.rows} rows, format {manifest.format} (from {src})"
    if manifest.rejects:
        line += f", {manifest.rejects['count']} rejected (rejects: {manifest.rejects['path']})"
    typer.echo(line)


@app.command()
def formats() -> None:
    """List the record formats medtune reads and writes."""
    from medtune_core.formats import FORMATS

    for fmt in sorted(FORMATS.values(), key=lambda f: (f.kind.value, f.name)):
        typer.echo(f"{fmt.name:22} {fmt.kind.value:11} {fmt.description}")


# --------------------------------------------------------------------------------------------- models


@models_app.command("list")
def models_list() -> None:
    """List the embedded models and whether they are materialised."""
    from medtune_core.models.registry import EMBEDDED, embedded_dir, is_materialized

    for model in EMBEDDED.values():
        state = "ready" if is_materialized(model.name) else "not materialised"
        where = "(in package)" if model.in_place else str(embedded_dir(model.name))
        typer.echo(f"embedded:{model.name:24} {model.kind:20} {state:17} {where}")
        typer.echo(f"    {model.description}")


@models_app.command("materialize")
def models_materialize(
    names: Annotated[list[str] | None, typer.Argument(help="Embedded model names; default: all.")] = None,
) -> None:
    """Materialise embedded models into MEDTUNE_HOME (once; safe to run from several workers)."""
    from medtune_core.models.registry import EMBEDDED, materialize

    for name in names or list(EMBEDDED):
        with user_errors():
            typer.echo(f"embedded:{name}: {materialize(name.removeprefix('embedded:'))}")


# ---------------------------------------------------------------------------------------------- flows


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``a.b=value`` pairs → nested dict; values are parsed as YAML (``3`` int, ``[a, b]`` list, ``x`` str)."""
    result: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise MedtuneError(f"--set {pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        node = result
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MedtuneError(f"--set {pair!r}: {part} is not a mapping")
        node[leaf] = value
    return result


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_params(model: Any, config: Path | None, overrides: list[str]) -> Any:
    """Validate a recipe plus overrides against a flow's parameter model; raise with every problem listed."""
    from pydantic import ValidationError

    data: dict[str, Any] = {}
    if config is not None:
        loaded = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise MedtuneError(f"{config}: expected a mapping of parameters at the top level")
        data = loaded.get("params", loaded)
    data = deep_merge(data, parse_overrides(overrides))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        where = str(config) if config else "parameters"
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise MedtuneError(f"{where}: {problems}") from None


@app.command()
def flows() -> None:
    """List the flows ``medtune run`` can start."""
    from flows.registry import FLOWS

    for spec in FLOWS.values():
        typer.echo(f"{spec.name:22} {spec.description}")


@app.command()
def run(
    flow_name: Annotated[str, typer.Argument(metavar="FLOW", help="Flow name (see `medtune flows`).")],
    config: Annotated[Path | None, typer.Option("--config", help="YAML recipe of parameters.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a parameter: dotted.key=value (repeatable).")
    ] = None,
) -> None:
    """Run a flow; the last line printed is ``{"flow", "flow_run_id", "state", "outputs"}`` as JSON."""
    from flows.registry import load_flow

    with user_errors(code=2):
        flow_obj, model = load_flow(flow_name)
        params = build_params(model, config, overrides or [])
    state = flow_obj(params=params, return_state=True)
    outputs: Any = {}
    error = None
    if state.is_completed():
        outputs = state.result(raise_on_failure=False)
    else:
        error = state.message
    summary = {
        "flow": flow_name,
        "flow_run_id": str(state.state_details.flow_run_id),
        "state": state.type.value,
        "outputs": outputs,
    }
    if error:
        summary["error"] = error
    sys.stdout.flush()
    typer.echo(json.dumps(summary, ensure_ascii=False, default=str))
    if not state.is_completed():
        raise typer.Exit(1)


@app.command()
def deploy(
    gpus: Annotated[int, typer.Option(help="GPUs behind the medtune-cuda pool: its concurrency limit.")] = 1,
    cuda_pool_type: Annotated[str, typer.Option(help="process (worker on a GPU host) or docker.")] = "process",
) -> None:
    """Create the work pools if missing and deploy every flow (deployments/prefect.yaml)."""
    from flows.deploy import deploy_all

    try:
        deploy_all(gpus=gpus, cuda_pool_type=cuda_pool_type)
    except RuntimeError as exc:
        fail(str(exc))
    typer.echo("deployed; start workers with: prefect worker start --pool medtune-cpu  (and --pool medtune-cuda)")


@app.command()
def serve() -> None:
    """Serve every flow from this one process (single machine, no worker needed)."""
    from flows.deploy import serve_all

    serve_all()


#: Command groups that live in their flow's own CLI module (kept light: heavy imports inside commands).
SUBAPPS = {
    "bailian": ("flows.cli_bailian", "Bailian (Alibaba Cloud Model Studio): convert, split, estimate, upload, jobs."),
    "recall": ("flows.cli_recall", "Eval-driven recall: evaluate a model on a benchmark, compare two result files."),
    "train": ("flows.cli_training", "Training helpers: domain vocabulary (extend-vocab)."),
}


def _mount_subapps() -> None:
    import importlib

    for name, (module, help_text) in SUBAPPS.items():
        try:
            sub = importlib.import_module(module).app
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        app.add_typer(sub, name=name, help=help_text)


#: Modules whose ``COMMANDS`` (name → function) become top-level commands (infer, chat, api, ui, safety-eval).
COMMAND_MODULES = ["flows.cli_serving"]


def _mount_commands() -> None:
    import importlib

    for module in COMMAND_MODULES:
        for name, fn in importlib.import_module(module).COMMANDS.items():
            app.command(name)(fn)


_mount_subapps()
_mount_commands()


def main() -> None:
    """Entry point: configure Prefect's result storage before Prefect is imported, then dispatch."""
    from tasks.prefect_env import apply_prefect_defaults

    apply_prefect_defaults()
    setup_logging()
    app()


if __name__ == "__main__":
    main()
