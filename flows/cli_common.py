"""What every ``medtune`` command group shares: how a command fails in front of the user."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn

import typer

from medtune_core.errors import MedtuneError


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` on stderr and leave with ``code`` (1: bad input or a failed step, 2: usage)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException], code: int = 1) -> Iterator[None]:
    """Inside: medtune's own errors (and ``kinds``) end the command through :func:`fail` instead of a traceback."""
    try:
        yield
    except (MedtuneError, *kinds) as exc:
        fail(str(exc), code)
