"""The one batch schedule of a synthesis run, whoever runs the batches (the Prefect flow or :func:`run_llm_mode`).

A run is a plan of batches (agent, source, index range). At most ``parallel`` of them are out at once; the next starts
as soon as ANY running one ends (a short batch ending first must not leave the endpoint to one batch's draining tail),
and an agent's file is written as soon as its last batch is in, while the other agents' batches go on. A batch that
the budget stopped (:class:`BudgetStop`) ends the run's submissions: the batches not yet started are settled as not
run, and every agent is finalised with what it has.

The schedule does not know how a batch runs: the caller passes ``submit`` (start a batch, return a handle whose
``result()`` waits for it and returns its result or raises) and ``wait_any`` (one finished handle out of those
given). The flow passes task submissions (``tasks.base.submit_fresh``) and Prefect's ``as_completed``; the library
passes coroutines on an event loop of its own (``asyncio.run_coroutine_threadsafe``) and ``concurrent.futures.wait``.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from medtune_core.errors import MedtuneError

R = TypeVar("R")
Key = tuple[str, str]  # (agent, source)


class BudgetStop(MedtuneError):
    """The budget cap stopped a batch before it finished (nothing over the cap was sent). ``partial``: what the
    batch did get (e.g. the manifest of its batch file, with the indices still missing), or None."""

    def __init__(self, message: str, partial: Any = None) -> None:
        super().__init__(message, partial)  # both in args: the exception survives pickling (result storage)
        self.partial = partial

    def __str__(self) -> str:
        return str(self.args[0])


class Handle(Protocol[R]):  # type: ignore[misc]
    def result(self) -> R: ...


@dataclass(frozen=True)
class Batch:
    """Samples ``start .. start+count-1`` of ``agent`` from ``source`` (``seed`` = template mode, ``llm``)."""

    agent: str
    source: str
    start: int
    count: int

    @property
    def key(self) -> Key:
        return (self.agent, self.source)


@dataclass
class BatchSchedule(Generic[R]):
    """The plan, the batches still out per agent and source, the results in index order and the stop reason."""

    batches: Sequence[Batch]
    stopped: str | None = None
    _left: Counter[Key] = field(default_factory=Counter, init=False)
    _results: dict[Key, dict[int, R]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._left = Counter(b.key for b in self.batches)

    def agent_sources(self) -> list[Key]:
        """Agent and source pairs in plan order."""
        return list(dict.fromkeys(b.key for b in self.batches))

    def settle(self, batch: Batch, result: R | None) -> bool:
        """Record one batch's end (``None``: it did not run); True when it was the agent's last batch."""
        if result is not None:
            self._results.setdefault(batch.key, {})[batch.start] = result
        self._left[batch.key] -= 1
        return self._left[batch.key] == 0

    def results(self, key: Key) -> list[R]:
        """The results of an agent and source, in index order."""
        got = self._results.get(key, {})
        return [got[start] for start in sorted(got)]

    def stop(self, reason: str) -> None:
        self.stopped = self.stopped or reason

    def run(
        self,
        submit: Callable[[Batch], Handle[R]],
        wait_any: Callable[[list[Handle[R]]], Handle[R]],
        on_complete: Callable[[Key, list[R]], None],
        parallel: int = 1,
    ) -> None:
        """Run the plan: at most ``parallel`` batches out, ``on_complete(key, results)`` when an agent's last batch
        is in (also for an agent the budget stop left with nothing). Any error but :class:`BudgetStop` propagates."""
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        out: dict[Handle[R], Batch] = {}

        def finish(batch: Batch, handle: Handle[R] | None) -> None:
            result: R | None = None
            if handle is not None:
                try:
                    result = handle.result()
                except BudgetStop as stop:
                    self.stop(str(stop))
                    result = stop.partial
            if self.settle(batch, result):
                on_complete(batch.key, self.results(batch.key))

        for batch in self.batches:
            if self.stopped is not None:
                finish(batch, None)
                continue
            out[submit(batch)] = batch
            while len(out) >= parallel:
                done = wait_any(list(out))
                finish(out.pop(done), done)
        while out:
            done = wait_any(list(out))
            finish(out.pop(done), done)


def wait_any_future(handles: list[Any]) -> Any:
    """``wait_any`` for :mod:`concurrent.futures` futures."""
    done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
    return next(h for h in handles if h in done)
