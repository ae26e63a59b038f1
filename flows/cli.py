"""The ``medtune`` command line: validate and convert data, manage embedded models, run flows.

``medtune run FLOW`` validates the YAML recipe plus ``--set`` overrides against the flow's parameter
model before anything runs, runs the flow on the ephemeral Prefect server (or the one ``PREFECT_API_URL``
names) and prints, as its last line, one JSON object naming the run, its state and its outputs.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_common import fail, setup_logging, user_errors
from medtune_core.dataio.reader import Policy  # a typo in --policy is a usage error (exit 2), not a traceback

app = typer.Typer(help="medtune: fine-tuning factory for medical language models.", no_args_is_help=True)
models_app = typer.Typer(help="Embedded default models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

log = logging.getLogger("medtune")


# ----------------------------------------------------------------------------------------------- data


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Dataset files to check.")],
    fmt: Annotated[str | None, typer.Option("--format", help="Format name; default: detect.")] = None,
    policy: Annotated[
        Policy, typer.Option(help="strict: stop at the first bad row; skip: count bad rows.")
    ] = Policy.STRICT,
    rejects: Annotated[
        Path | None, typer.Option(help="With --policy skip: write bad rows here (one file per input: suffixed).")
    ] = None,
) -> None:
    """Check every row of each file; prints ``FILE: N rows, format F``."""
    from medtune_core.dataio import DatasetReader

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
    policy: Annotated[Policy, typer.Option(help="strict or skip (bad rows go to OUT.rejects.jsonl).")] = Policy.STRICT,
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
        list[str] | None,
        typer.Option("--set", help="Override a parameter: dotted.key=value, list items by index (repeatable)."),
    ] = None,
) -> None:
    """Run a flow; the last line printed is ``{"flow", "flow_run_id", "state", "outputs"}`` as JSON.

    Exit status: 0 completed, 1 the run failed, 2 bad parameters (nothing ran), 130/143 cancelled by
    Ctrl-C/SIGTERM (the run is marked Cancelled and the summary line still printed).
    """
    import signal as signals

    from prefect.exceptions import TerminationSignal

    from flows.interrupt import CancelOnSignal, ephemeral_server
    from flows.params import build_params
    from flows.registry import load_flow

    with user_errors(code=2):
        flow_obj, model = load_flow(flow_name)
        params = build_params(model, config, overrides or [])
    with CancelOnSignal(lambda c: _report_cancelled(flow_name, c, timed_out=True)) as cancel:
        try:
            with ephemeral_server():
                state = flow_obj.with_options(on_running=[*flow_obj.on_running_hooks, cancel.remember_run])(
                    params=params, return_state=True
                )
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt | TerminationSignal):
                raise
            cancel.stopped_by(getattr(exc, "signum", None) or getattr(exc, "signal", signals.SIGINT))
    if cancel.cancelled:
        _report_cancelled(flow_name, cancel)
    outputs: Any = {}
    error = None
    if state.is_completed():
        outputs = state.result(raise_on_failure=False)
    else:
        error = state.message
    _print_summary(flow_name, str(state.state_details.flow_run_id), state.type.value, outputs, error)
    if not state.is_completed():
        raise typer.Exit(1)


def _print_summary(flow_name: str, run_id: str | None, state: str, outputs: Any, error: str | None = None) -> None:
    summary: dict[str, Any] = {"flow": flow_name, "flow_run_id": run_id, "state": state, "outputs": outputs}
    if error:
        summary["error"] = error
    sys.stderr.flush()
    sys.stdout.flush()
    typer.echo(json.dumps(summary, ensure_ascii=False, default=str))
    sys.stdout.flush()


def _report_cancelled(flow_name: str, cancel: Any, timed_out: bool = False) -> None:
    """Mark the run Cancelled, print the summary line once, leave (``os._exit``: stuck worker threads are not
    waited for). Called by the CLI after the flow unwound, or by the watchdog when that takes too long."""
    import signal as signals

    from flows.interrupt import exit_code, leave_now, mark_cancelled

    signum = cancel.signum or signals.SIGINT
    if not _REPORTING.acquire(timeout=3.0 if timed_out else -1):
        leave_now(exit_code(signum))  # the other path is reporting and stuck: leave anyway
    reason = f"cancelled by {signals.Signals(signum).name}"
    state = "CANCELLED"
    if timed_out:
        reason += "; the flow's clean-up did not finish in time"
    if cancel.flow_run_id is not None:
        marked: list[str] = []

        def mark() -> None:
            try:
                marked.append(mark_cancelled(cancel.flow_run_id, reason))
            except Exception as exc:  # the server is gone: say so, the summary line is still owed
                log.error("could not mark flow run %s cancelled: %s", cancel.flow_run_id, exc)

        marking = threading.Thread(target=mark, daemon=True)
        marking.start()
        marking.join(timeout=2.0 if timed_out else 3.0)  # the summary line is due within seconds of the signal
        state = marked[0] if marked else state
    run_id = str(cancel.flow_run_id) if cancel.flow_run_id else None
    _print_summary(flow_name, run_id, state, {}, reason)
    cancel.finished()
    leave_now(exit_code(signum))


#: One cancellation report per process (the CLI's and the watchdog's paths may race).
_REPORTING = threading.Lock()


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
COMMAND_MODULES = ["flows.cli_serving", "flows.cli_audit"]


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
