"""What every ``medtune`` command group shares: how a command fails in front of the user."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` on stderr and leave with ``code`` (1: bad input or a failed step, 2: usage)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
