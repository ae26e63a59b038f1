"""Retry presets: what a transient failure looks like differs between network calls and GPU work.

Network: exponential backoff with jitter on timeouts, 429 and 5xx, never on a 4xx that says the request
itself is wrong (retrying it costs money and fails the same way). GPU: one retry for a lost worker, none
for CUDA out-of-memory, which needs a smaller batch, not another try.
"""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff
from pydantic import ValidationError

from medtune_core.errors import MedtuneError

RETRYABLE_CLIENT_STATUSES = {408, 409, 425, 429}


def status_code(exc: BaseException) -> int | None:
    """The HTTP status carried by an SDK exception (openai, httpx, requests, dashscope), if any."""
    for candidate in (exc, getattr(exc, "response", None)):
        code = getattr(candidate, "status_code", None) or getattr(candidate, "status", None)
        if isinstance(code, int):
            return code
    return None


def is_transient_network_error(exc: BaseException) -> bool:
    """Whether retrying the same request could succeed."""
    if isinstance(exc, (MedtuneError, ValidationError, ValueError, TypeError, KeyError)):
        return False
    code = status_code(exc)
    if code is not None and 400 <= code < 500:
        return code in RETRYABLE_CLIENT_STATUSES
    return True


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
