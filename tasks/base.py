"""``medtune_task``: Prefect's ``@task`` with medtune's defaults for caching, persistence and retries.

Every cached task persists its result (Prefect only caches persisted results) to the result storage the
process was configured with (see :mod:`tasks.prefect_env`), keys on content (:data:`CONTENT_AWARE`) and
picks a retry preset by the kind of work it does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.caching import CONTENT_AWARE, content_aware
from tasks.retries import GPU_RETRIES, NETWORK_RETRIES, NO_RETRIES

F = TypeVar("F", bound=Callable[..., Any])
RetryPreset = Literal["none", "network", "gpu"]
PRESETS = {"none": NO_RETRIES, "network": NETWORK_RETRIES, "gpu": GPU_RETRIES}


def medtune_task(
    fn: F | None = None,
    *,
    name: str | None = None,
    retry: RetryPreset = "none",
    cache: bool = True,
    tags: Iterable[str] = (),
    outputs: Iterable[str] = (),
    **task_kwargs: Any,
) -> Any:
    """Decorate a task function; usable bare (``@medtune_task``) or with options.

    ``outputs`` names parameters that say where the task writes (besides the usual ``dst``, ``out_dir``,
    ``output_dir``...): their paths count by location, not content, in the cache key.
    """

    def decorate(func: F) -> Any:
        options: dict[str, Any] = dict(PRESETS[retry])
        options.update(
            name=name or func.__name__.replace("_", "-"),
            cache_policy=(content_aware(set(outputs)) if outputs else CONTENT_AWARE) if cache else NO_CACHE,
            persist_result=cache,
            tags=set(tags) | ({"gpu"} if retry == "gpu" else set()),
        )
        options.update(task_kwargs)
        return task(func, **options)

    return decorate(fn) if fn is not None else decorate


def outputs_current(result: Any) -> bool:
    """Whether every output a task result names is still what it was: each :class:`~medtune_core.dataio.Manifest`
    and :class:`~tasks.caching.OutputPath` (anything with ``is_current()``), also inside dicts, lists and tuples."""
    check = getattr(result, "is_current", None)
    if callable(check):
        return bool(check())
    if isinstance(result, dict):
        return all(outputs_current(v) for v in result.values())
    if isinstance(result, (list, tuple)):
        return all(outputs_current(v) for v in result)
    return True


def fresh(task_obj: Any, result: Any, *args: Any, **kwargs: Any) -> Any:
    """The one freshness check: ``result`` of ``task_obj(*args, **kwargs)``, or, when it names outputs that were
    deleted or changed since it was cached, the task run again with ``refresh_cache`` (a cache hit must never hand
    back a file that is no longer there)."""
    if outputs_current(result):
        return result
    return task_obj.with_options(refresh_cache=True)(*args, **kwargs)


def call_fresh(task_obj: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a cached task and apply :func:`fresh` to its result."""
    return fresh(task_obj, task_obj(*args, **kwargs), *args, **kwargs)


class FreshFuture:
    """A cached task submitted to the flow's task runner (it runs while the flow goes on); :meth:`result` waits for
    it and applies :func:`fresh` (a stale result is recomputed in the caller's thread)."""

    def __init__(self, task_obj: Any, *args: Any, **kwargs: Any) -> None:
        self.task_obj, self.args, self.kwargs = task_obj, args, kwargs
        self.future = task_obj.submit(*args, **kwargs)

    def result(self) -> Any:
        return fresh(self.task_obj, self.future.result(), *self.args, **self.kwargs)


def submit_fresh(task_obj: Any, *args: Any, **kwargs: Any) -> FreshFuture:
    """Submit a cached task; ``.result()`` applies :func:`fresh`."""
    return FreshFuture(task_obj, *args, **kwargs)


def map_fresh(task_obj: Any, calls: list[tuple[Any, ...]], parallel: int = 1) -> list[Any]:
    """:func:`call_fresh` over many argument tuples, at most ``parallel`` runs at once (in submission waves on the
    flow's task runner: threads by default, workers of a Dask or Ray runner); results in input order."""
    if parallel <= 1:
        return [call_fresh(task_obj, *args) for args in calls]
    results: list[Any] = []
    for start in range(0, len(calls), parallel):
        wave = [submit_fresh(task_obj, *args) for args in calls[start : start + parallel]]
        results.extend(f.result() for f in wave)
    return results
