"""Errors that point at the exact place in the user's data that is wrong."""

from __future__ import annotations

from pathlib import Path


class MedtuneError(Exception):
    """Base class of every error medtune raises on purpose (bad input, bad configuration)."""


class FieldError(MedtuneError):
    """A record is invalid; raised by parsers before the location is known."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class RecordError(MedtuneError):
    """A record at ``path:line`` is invalid: the message reads ``path:line: field: problem``."""

    def __init__(self, path: str | Path, line: int, field: str, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        super().__init__(f"{self.path}:{line}: {field}: {problem}")


class FormatDetectionError(MedtuneError):
    """No registered record format matches a file."""


class ModelNotAvailableError(MedtuneError):
    """A model reference cannot be resolved to local files (nothing can be downloaded here)."""
