"""Retry presets: what a transient failure looks like differs between network calls and GPU work.

Network: exponential backoff with jitter, and only for failures of the network itself: a refused or reset
connection, a timeout, HTTP 408/409/425/429 and 5xx. Everything else fails at once: a 4xx says the request itself is
wrong (retrying it costs money and fails the same way), and an unknown exception (an ``AttributeError``, a
``KeyError``) is a bug that four more tries only hide. An exception may say for itself whether it is worth
retrying with a ``transient`` attribute (e.g. the Bailian client's errors). GPU: one retry for a lost worker, none
for CUDA out-of-memory, which needs a smaller batch, not another try.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

from prefect.tasks import exponential_backoff
from pydantic import ValidationError

from medtune_core.errors import MedtuneError

RETRYABLE_CLIENT_STATUSES = frozenset({408, 409, 425, 429})

#: Exception classes that mean "the network failed", by module (only those installed count): connection refused or
#: reset and timeouts of the standard library and of the HTTP stacks the SDKs use.
NETWORK_ERROR_CLASSES: dict[str, tuple[str, ...]] = {
    "builtins": ("ConnectionError", "TimeoutError"),
    "openai": ("APIConnectionError",),  # APITimeoutError is a subclass
    "httpx": ("TransportError",),
    "httpx2": ("TransportError",),
    "aiohttp": ("ClientConnectionError", "ServerTimeoutError"),
    "requests.exceptions": ("ConnectionError", "Timeout"),
}


def _network_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = []
    for module, names in NETWORK_ERROR_CLASSES.items():
        with contextlib.suppress(ImportError):
            mod = importlib.import_module(module)
            found.extend(getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type))
    return tuple(found)


NETWORK_ERRORS = _network_errors()


def status_code(exc: BaseException) -> int | None:
    """The HTTP status carried by an SDK exception (openai, httpx, requests, dashscope), if any."""
    for candidate in (exc, getattr(exc, "response", None)):
        code = getattr(candidate, "status_code", None) or getattr(candidate, "status", None)
        if isinstance(code, int):
            return code
    return None


def is_transient_network_error(exc: BaseException) -> bool:
    """Whether retrying the same request could succeed: a network failure or a retryable HTTP status, nothing else."""
    declared = getattr(exc, "transient", None)
    if isinstance(declared, bool):
        return declared
    code = status_code(exc)
    if code is not None:
        return code in RETRYABLE_CLIENT_STATUSES or code >= 500
    if isinstance(exc, (MedtuneError, ValidationError)):
        return False
    return isinstance(exc, NETWORK_ERRORS)


def is_cuda_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc)


def _state_exception(state: Any) -> BaseException | None:
    try:
        state.result()
    except BaseException as exc:
        return exc
    return None


def retry_on_transient_network(task: Any, task_run: Any, state: Any) -> bool:
    exc = _state_exception(state)
    return exc is None or is_transient_network_error(exc)


def retry_unless_oom_or_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    exc = _state_exception(state)
    return exc is None or not (is_cuda_oom(exc) or isinstance(exc, (MedtuneError, ValidationError)))


NETWORK_RETRIES: dict[str, Any] = {
    "retries": 4,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_transient_network,
}
GPU_RETRIES: dict[str, Any] = {
    "retries": 1,
    "retry_delay_seconds": 10,
    "retry_condition_fn": retry_unless_oom_or_bad_input,
}
NO_RETRIES: dict[str, Any] = {"retries": 0}
