"""What every ``medtune`` command group shares: how a command fails in front of the user."""

from __future__ import annotations

import contextlib
import logging
import sys
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


#: HTTP client libraries that log every request at INFO: one line per LLM request (thousands in a synthesis run) and
#: per Prefect API call, which buries the flow's own log and costs CPU on the request path.
CHATTY_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2")


class UserErrorFormatter(logging.Formatter):
    """A medtune error (bad input or configuration, its message names the file, line and field) is printed
    without its traceback: Prefect logs every task failure with one, which buries the one line that says what
    to fix. Other exceptions keep theirs. (Only the terminal's copy: the run's log on the server keeps it.)"""

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, MedtuneError):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return super().format(record)


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr at ``level`` as ``LEVEL name: message``; the HTTP libraries only from WARNING."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(UserErrorFormatter("%(levelname)s %(name)s: %(message)s"))
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
