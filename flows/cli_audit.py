"""``medtune audit FILE``: the clinical consistency rules on any synthesized agent output file.

Prints the violations by rule (with the first rows of each) and ends with exit code 1 when a row breaks a rule or
cannot be read, so a data pipeline can stop on clinically inconsistent data. ``COMMANDS`` is registered by the main
CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import user_errors


def audit(
    file: Annotated[Path, typer.Argument(help="An agent output file (instruction, conversations or messages JSONL).")],
    agent: Annotated[
        str | None, typer.Option(help="The agent of rows without meta.agent (default: from the file name or prompt).")
    ] = None,
    vocabulary: Annotated[
        list[Path] | None,
        typer.Option(help="Extra vocabulary file or folder (e.g. a hospital formulary); repeatable."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check every row of FILE against the clinical consistency rules and print the violations by rule."""
    from medtune_core.synthesis.audit import audit_file

    with user_errors():
        report = audit_file(file, agent, vocabulary or ())
    typer.echo(json.dumps(report.as_dict(), ensure_ascii=False, indent=2) if as_json else report.text())
    if not report.clean:
        raise typer.Exit(1)


COMMANDS = {"audit": audit}
