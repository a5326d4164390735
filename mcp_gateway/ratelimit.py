"""Rate limits: a token bucket per (catalog, subject, tool), declared in the catalog as ``60/minute``.

A limit of ``N/period`` is a bucket holding at most ``N`` tokens that refills at ``N`` per period; each call
takes one token or is refused with the time until the next token. A burst of ``N`` calls passes at once, and
over any window of length ``t`` at most ``N + N*t/period`` calls pass.

The bucket state sits behind :class:`BucketStore`: a store only has to make :meth:`BucketStore.take` atomic per
key. ``take`` is a coroutine so that a database store waits on its database without blocking the event loop.
:class:`MemoryBucketStore` is the one-process store and the default (``limits.store: memory``): a lock around a
dict, taken without awaiting anything, so a call costs no thread hop and no loop turn (and 200 threads taking at
once never admit more than the bucket holds). :class:`DatabaseBucketStore` (``limits.store: database``) keeps
one row per bucket in a database every replica shares (store/buckets.py): exact across replicas, one database
round trip per rate-limited call (on the event loop's own connection for PostgreSQL, on a worker thread for
SQLite), and a store that cannot answer refuses the call.

Limits are applied after the policy decision (a hidden tool's limit reveals nothing) and before argument
validation and any backend work, so a flood of malformed calls is limited too.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mcp_gateway.config import LimitsSettings
from mcp_gateway.errors import RateLimitedError
from mcp_gateway.store.buckets import BucketTable, Clock

__all__ = [
    "BucketStore",
    "DatabaseBucketStore",
    "MemoryBucketStore",
    "RateLimiter",
    "RateSpec",
    "open_bucket_store",
    "parse_rate",
]

logger = logging.getLogger(__name__)

_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86_400.0}
_RATE = re.compile(r"\s*([1-9][0-9]{0,8})\s*/\s*(second|minute|hour|day)s?\s*")
DEFAULT_MAX_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class RateSpec:
    """``count`` calls per ``period`` seconds: the bucket's capacity and its refill rate."""

    count: int
    period: float
    text: str

    def __str__(self) -> str:
        return self.text


def parse_rate(text: str) -> RateSpec:
    """Parse ``"60/minute"`` (also ``second``, ``hour``, ``day``; a plural ``s`` is accepted).

    Raises:
        ValueError: not of the form ``N/unit`` with ``N`` a positive integer.
    """
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(f"rate limit {text[:40]!r} is not like 60/minute (units: {', '.join(_PERIODS)})")
    count, unit = int(match.group(1)), match.group(2)
    return RateSpec(count, _PERIODS[unit], f"{count}/{unit}")


class BucketStore(Protocol):
    """Where bucket levels live. A shared (database) store must make :meth:`take` atomic per key."""

    async def take(self, key: str, spec: RateSpec, now: float) -> float:
        """Take one token from ``key``'s bucket at time ``now`` (seconds, any fixed origin).

        Returns:
            0.0 when a token was taken; otherwise the seconds until one will be available (nothing is taken).

        Raises:
            UnavailableError: the store cannot answer; the call must be refused (fail closed).
        """
        ...

    def close(self) -> None:
        """Release the store's connections and threads, if it has any."""
        ...

    def ping(self) -> str | None:
        """None when the store can answer now, else why not (blocking, bounded: for ``/readyz``)."""
        ...


class MemoryBucketStore:
    """Buckets of one process: a dict under a lock. Refilled buckets are dropped when the dict grows too big."""

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        # key -> (tokens, at, capacity, refill rate per second)
        self._levels: dict[str, tuple[float, float, float, float]] = {}
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def __len__(self) -> int:
        return len(self._levels)

    def close(self) -> None:
        """Nothing to release."""

    def ping(self) -> None:
        """Always ready: the buckets are in this process."""

    async def take(self, key: str, spec: RateSpec, now: float) -> float:
        # Nothing is awaited: the token is taken before the caller's task can be suspended. The lock is for other
        # threads (and other event loops) sharing this store.
        capacity, rate = float(spec.count), spec.count / spec.period
        with self._lock:
            level = self._levels.get(key)
            if level is None:
                if len(self._levels) >= self._max_keys and not self._sweep(now):
                    # Fail closed rather than forget limits: every bucket is still refilling.
                    return 1.0 / rate
                tokens = capacity
            else:
                tokens = min(capacity, level[0] + max(0.0, now - level[1]) * rate)
            if tokens >= 1.0:
                self._levels[key] = (tokens - 1.0, now, capacity, rate)
                return 0.0
            self._levels[key] = (tokens, now, capacity, rate)
            return (1.0 - tokens) / rate

    def _sweep(self, now: float) -> bool:
        # A bucket that has refilled is indistinguishable from an absent one.
        full = [key for key, (tokens, at, cap, rate) in self._levels.items() if tokens + (now - at) * rate >= cap]
        for key in full:
            del self._levels[key]
        logger.info("rate limiter swept %d refilled buckets, %d remain", len(full), len(self._levels))
        return len(self._levels) < self._max_keys


class DatabaseBucketStore:
    """Buckets as rows of a database the replicas share (store/buckets.py): exact across all of them.

    The bucket's time is the database's (PostgreSQL ``clock_timestamp()``), so the ``now`` a take is given is
    ignored unless the store was opened with ``clock="caller"`` (tests and benchmarks replaying a schedule).
    """

    def __init__(self, table: BucketTable) -> None:
        self.table = table

    @classmethod
    def open(cls, database_url: str, settings: LimitsSettings, clock: Clock = "database") -> DatabaseBucketStore:
        """Open the bucket table at ``database_url``.

        Raises:
            UnavailableError: the database cannot be reached (the gateway refuses to start).
        """
        return cls(BucketTable(database_url, timeout=settings.timeout, workers=settings.workers, clock=clock))

    async def take(self, key: str, spec: RateSpec, now: float) -> float:
        return await self.table.take(key, float(spec.count), spec.count / spec.period, now)

    def close(self) -> None:
        self.table.close()

    def ping(self) -> str | None:
        return self.table.ping()


def open_bucket_store(settings: LimitsSettings, database_url: str) -> BucketStore:
    """The store ``limits.store`` names; the database one at ``limits.database_url``, else ``database_url``.

    Raises:
        UnavailableError: the database store cannot reach its database.
    """
    if settings.store == "memory":
        return MemoryBucketStore()
    return DatabaseBucketStore.open(settings.database_url or database_url, settings)


class RateLimiter:
    """Applies each tool's :class:`RateSpec` to the calling subject, through a :class:`BucketStore`."""

    def __init__(self, store: BucketStore | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.store: BucketStore = store if store is not None else MemoryBucketStore()
        self._clock = clock

    def close(self) -> None:
        """Close the store (its connections, for a database store)."""
        self.store.close()

    @staticmethod
    def key(catalog: str, subject: str, tool: str, spec: RateSpec) -> str:
        """The bucket key: a changed limit starts a fresh bucket rather than inheriting another size's level."""
        return f"{catalog}\0{subject}\0{tool}\0{spec.period}\0{spec.count}"

    async def take(self, catalog: str, subject: str, tool: str, spec: RateSpec | None) -> None:
        """Admit one call or refuse it.

        Raises:
            RateLimitedError: the bucket is empty; ``retry_after`` says when the next token arrives.
        """
        if spec is None:
            return
        wait = await self.store.take(self.key(catalog, subject, tool, spec), spec, self._clock())
        if wait > 0.0:
            raise RateLimitedError(f"{subject!r} over {spec} on {catalog}/{tool}", retry_after=wait)
