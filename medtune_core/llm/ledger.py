"""Thread-safe accounting of LLM requests: tokens, cost per currency, cache hits, and the budget reservation.

Why: a run must say what it cost, and a budget must be spent up to its cap without concurrent requests overshooting
it together. Before a request is sent the client reserves an estimate of its cost (:meth:`CostLedger.try_reserve`);
the reservation is released when the answer arrives and the real cost, from the usage the provider reported, is
recorded. The check is ``spent + reserved + estimate <= budget``.

The estimate starts conservative (every prompt character counted, the whole ``max_tokens`` answer) and is then
*calibrated* by what answers really cost (:meth:`CostLedger.observe`): the estimate is scaled by the largest ratio of
real to conservative cost seen so far for that model, plus a margin (answers from the response cache count too, so a
run after a pilot starts calibrated). A request that does not fit while others are in flight waits for their
reservations to be settled instead of being dropped; only one that does not fit with nothing in flight ends the run.
So a run stops with at most about one request's cost of its budget left.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

from medtune_core.llm.pricing import Cost, Usage


@dataclass(frozen=True)
class LedgerEntry:
    """One API call (``cached=False``, paid) or one answer served from the response cache (``cached=True``, free)."""

    kind: str
    model: str
    usage: Usage
    cost: float
    currency: str
    priced: bool
    cached: bool


@dataclass(frozen=True)
class Reservation:
    """Outcome of :meth:`CostLedger.try_reserve`: ``ok`` and the spent / reserved totals before it."""

    ok: bool
    spent: float
    reserved: float

    def __bool__(self) -> bool:
        return self.ok


@dataclass
class CostLedger:
    """Totals of the requests of one run (share one ledger among clients to cap their sum). Thread-safe."""

    keep_entries: bool = True
    entries: list[LedgerEntry] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _spent: dict[str, float] = field(default_factory=dict)
    _saved: dict[str, float] = field(default_factory=dict)
    _reserved: dict[str, float] = field(default_factory=dict, repr=False)
    requests: int = 0
    cache_hits: int = 0
    unpriced_requests: int = 0
    usage: Usage = field(default_factory=Usage)
    counters: dict[str, int] = field(default_factory=dict)
    #: (kind, model) -> the largest ratio real / conservative cost seen: how much of an estimate to reserve
    _ratio: dict[tuple[str, str], float] = field(default_factory=dict, repr=False)

    #: Reserved on top of the calibrated estimate (answers vary in length).
    CALIBRATION_MARGIN = 1.15

    def observe(self, kind: str, model: str, conservative: float, real: float) -> None:
        """Learn from one answer what a conservative estimate of ``conservative`` really cost (``real``)."""
        if conservative > 0 and real >= 0 and math.isfinite(real):
            with self._lock:
                key = (kind, model)
                self._ratio[key] = max(self._ratio.get(key, 0.0), real / conservative)

    def calibrated(self, kind: str, model: str, conservative: float) -> float:
        """What to reserve for a request whose conservative estimate is ``conservative``: scaled by the ratio
        observed for ``model`` (with a margin), or the conservative estimate while nothing was observed."""
        with self._lock:
            ratio = self._ratio.get((kind, model))
        return conservative if ratio is None else conservative * ratio * self.CALIBRATION_MARGIN

    def try_reserve(self, amount: float, currency: str, budget: float | None) -> Reservation:
        """Reserve ``amount`` if ``spent + reserved + amount <= budget`` (always when ``budget`` is None).
        The answer is truthy when reserved and carries the totals it was decided on."""
        with self._lock:
            spent = self._spent.get(currency, 0.0)
            reserved = self._reserved.get(currency, 0.0)
            if budget is not None and spent + reserved + amount > budget + 1e-12:
                return Reservation(False, spent, reserved)
            self._reserved[currency] = reserved + amount
            return Reservation(True, spent, reserved)

    def release(self, amount: float, currency: str) -> None:
        with self._lock:
            self._reserved[currency] = max(0.0, self._reserved.get(currency, 0.0) - amount)

    def record(self, kind: str, model: str, usage: Usage, cost: Cost, *, cached: bool = False) -> None:
        """Account one paid call, or (``cached=True``) one cache hit whose would-be cost counts as saved."""
        with self._lock:
            if cached:
                self.cache_hits += 1
                self._saved[cost.currency] = self._saved.get(cost.currency, 0.0) + cost.amount
            else:
                self.requests += 1
                self.usage = self.usage + usage
                self._spent[cost.currency] = self._spent.get(cost.currency, 0.0) + cost.amount
                if not cost.known:
                    self.unpriced_requests += 1
            if self.keep_entries:
                self.entries.append(
                    LedgerEntry(kind, model, usage, 0.0 if cached else cost.amount, cost.currency, cost.known, cached)
                )

    def count(self, name: str, n: int = 1) -> None:
        """Count an outcome (``rejected:<reason>``, ``failed:<reason>``, ``budget_exceeded``, ``retries`` ...)."""
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def spent(self, currency: str | None = None) -> float:
        """Money spent in ``currency``; without one, the only currency used (0 when nothing was spent)."""
        with self._lock:
            if currency is not None:
                return self._spent.get(currency, 0.0)
            nonzero = {c: v for c, v in self._spent.items() if v}
            if len(nonzero) > 1:
                raise ValueError(f"costs in several currencies {sorted(nonzero)}: name one")
            return next(iter(nonzero.values()), 0.0)

    def spent_by_currency(self) -> dict[str, float]:
        with self._lock:
            return dict(self._spent)

    def saved_by_currency(self) -> dict[str, float]:
        with self._lock:
            return dict(self._saved)

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary for artifacts and logs."""
        with self._lock:
            return {
                "requests": self.requests,
                "cache_hits": self.cache_hits,
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "cached_tokens": self.usage.cached_tokens,
                "cost": {c: round(v, 8) for c, v in self._spent.items()},
                "saved_by_cache": {c: round(v, 8) for c, v in self._saved.items()},
                "unpriced_requests": self.unpriced_requests,
                **dict(sorted(self.counters.items())),
            }


_SHARED: dict[str, CostLedger] = {}
_SHARED_LOCK = threading.Lock()


def shared_ledger(scope: str) -> CostLedger:
    """The one ledger of ``scope`` in this process (e.g. a flow run): clients given it share one budget, so batches
    running side by side together spend no more than the budget."""
    with _SHARED_LOCK:
        return _SHARED.setdefault(scope, CostLedger(keep_entries=False))


def forget_ledger(scope: str) -> None:
    """Drop a scope's shared ledger once its run is over (a long-lived worker process runs many)."""
    with _SHARED_LOCK:
        _SHARED.pop(scope, None)
