"""Rate-limit buckets in the database: exact across every replica that shares it (``limits.store: database``).

One row per bucket. A take is ONE statement: an upsert that reads the row's level, refills it for the time since
its last take, takes a token if there is one, and returns what it decided (``INSERT ... ON CONFLICT DO UPDATE
... RETURNING``). The database locks the row for the statement, so takes on one bucket are serialised wherever
they come from and no two can spend the same token: N replicas admit exactly what one process would.

Time is the database's: ``clock_timestamp()`` on PostgreSQL, so replicas whose clocks disagree still agree on
every bucket. A take's time is never earlier than the bucket's last one (``greatest(at, now)``): a statement
that read the clock and then waited for the row's lock, or a clock stepped back, refills nothing twice, so time
going backwards can under-admit by the length of the wait, never over-admit. SQLite (one host, several
processes) uses the host's wall clock, read by the process, under the same rule.

The event loop never waits on the database: on PostgreSQL a take runs on a few async connections of the calling
event loop (store/pgloop.py: no thread hop), on SQLite on a small pool of threads, each with its own driver
connection (the way store/chain.py writes the trail). Every failure, and a take that
does not finish within ``timeout`` seconds, raises :class:`UnavailableError`: the caller is refused, never
admitted (fail closed). A bucket that has refilled is indistinguishable from an absent one, so full rows are
deleted now and then (at most every ``SWEEP_INTERVAL`` seconds, by one of the takes).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any, Literal

from sqlalchemy.pool import PoolProxiedConnection

from mcp_gateway.errors import UnavailableError
from mcp_gateway.store.engine import create_tables, open_engine, unavailable
from mcp_gateway.store.pgloop import LoopConnections
from mcp_gateway.store.tables import RATE_BUCKET_TABLE

__all__ = ["SWEEP_INTERVAL", "BucketTable", "Clock", "bucket_id"]

_WHAT = "rate-limit store"
SWEEP_INTERVAL = 300.0
# database: PostgreSQL's clock_timestamp() (SQLite: the host's clock). caller: the ``now`` each take is given,
# for tests and benchmarks that replay a sequence of times against the memory store.
Clock = Literal["database", "caller"]

# Plain strings, no formatting of values into SQL: every value is a bound parameter. The table is rate_bucket
# (store/tables.py), and the bucket's level at the take's time is refilled for the time since its last take, never
# over capacity.
_LEVEL = "least(excluded.capacity, rate_bucket.tokens + greatest(0, excluded.at - rate_bucket.at) * excluded.rate)"
_UPDATE = (
    "ON CONFLICT (key) DO UPDATE SET tokens = CASE WHEN LEVEL >= 1 THEN LEVEL - 1 ELSE LEVEL END, "
    "at = greatest(rate_bucket.at, excluded.at), admitted = LEVEL >= 1 RETURNING tokens, admitted"
).replace("LEVEL", _LEVEL)
_PG_NOW = {"database": "extract(epoch FROM clock_timestamp())::float8", "caller": "%(now)s::float8"}
_PG_TAKE = (
    "WITH clock AS (SELECT NOW_SQL AS now) INSERT INTO rate_bucket (key, tokens, at, capacity, rate, admitted) "  # noqa: S608
    "SELECT %(key)s, %(capacity)s - 1, clock.now, %(capacity)s, %(rate)s, true FROM clock " + _UPDATE
)
# SQLite spells greatest/least as the two-argument max/min.
_SQLITE_TAKE = (
    (
        "INSERT INTO rate_bucket (key, tokens, at, capacity, rate, admitted) "
        "VALUES (:key, :capacity - 1, :now, :capacity, :rate, 1) " + _UPDATE
    )
    .replace("greatest(", "max(")
    .replace("least(", "min(")
)
_PG_SWEEP = "DELETE FROM rate_bucket WHERE tokens + (NOW_SQL - at) * rate >= capacity"
_SQLITE_SWEEP = "DELETE FROM rate_bucket WHERE tokens + (:now - at) * rate >= capacity"
assert RATE_BUCKET_TABLE.name == "rate_bucket"  # noqa: S101 - the SQL above names it


def bucket_id(key: str) -> str:
    """The row's key: the sha256 of the limiter's key (bounded, and free of the NUL bytes PostgreSQL refuses)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class BucketTable:
    """Takes tokens from shared buckets; see the module docstring. Safe to use from several event loops."""

    def __init__(self, database_url: str, *, timeout: float = 2.0, workers: int = 4, clock: Clock = "database"):
        """Open (and create if needed) the table.

        Raises:
            UnavailableError: the database cannot be reached or the table cannot be created.
        """
        self.timeout = timeout
        # SQLite: WAL and synchronous=NORMAL, as for the trail (a bucket is no more precious than a record).
        self._engine = open_engine(database_url, "process", connect_timeout=timeout)
        try:
            create_tables(self._engine, [RATE_BUCKET_TABLE], _WHAT)
        except UnavailableError:
            self._engine.dispose()
            raise
        self._postgres = self._engine.dialect.name == "postgresql"
        self._clock: Clock = clock
        if self._postgres:
            self._take_sql = _PG_TAKE.replace("NOW_SQL", _PG_NOW[clock])
            self._sweep_sql = _PG_SWEEP.replace("NOW_SQL", _PG_NOW[clock])
        else:
            self._take_sql, self._sweep_sql = _SQLITE_TAKE, _SQLITE_SWEEP
        milliseconds = max(1, int(timeout * 1000))
        # synchronous_commit off: a take does not wait for its WAL flush (an fsync, most of a take's cost). Takes
        # are still atomic and seen by every replica at once; a PostgreSQL crash can forget the last fraction of a
        # second of takes (at most 3 x wal_writer_delay), which is a bucket refilled early, never a record lost.
        self._bound_sql = (
            (
                f"SET lock_timeout = {milliseconds}",
                f"SET statement_timeout = {milliseconds}",
                "SET synchronous_commit = off",
            )
            if self._postgres
            else (f"PRAGMA busy_timeout={milliseconds}",)
        )
        self._driver_error: type[Exception] = self._engine.dialect.loaded_dbapi.Error
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rate-buckets")
        self._local = threading.local()
        self._connections: list[PoolProxiedConnection] = []
        self._lock = threading.Lock()
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        self._closed = False
        # PostgreSQL: takes from an event loop run on that loop's own async connections (store/pgloop.py), with no
        # thread hop; the thread pool serves take_blocking (and SQLite, whose driver has no async form).
        self._loop_connections = (
            LoopConnections(
                self._engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
                size=workers,
                connect_timeout=timeout,
                setup=self._bound_sql,
            )
            if self._postgres
            else None
        )

    async def take(self, key: str, capacity: float, rate: float, now: float) -> float:
        """Take one token from ``key``'s bucket (``capacity`` tokens, refilled at ``rate`` per second).

        ``now`` is used only with ``clock="caller"``; otherwise the database's clock decides.

        Returns:
            0.0 when a token was taken; otherwise the seconds until one will be available (nothing is taken).

        Raises:
            UnavailableError: the store could not answer within ``timeout`` seconds, or failed. Refuse the call.
        """
        try:
            # A backstop over the connection's own bounds (connect, lock and statement timeouts). asyncio.timeout,
            # not wait_for: wait_for wraps the coroutine in a task of its own, which cost a take about 70 µs here.
            async with asyncio.timeout(self.timeout + 1):
                if self._loop_connections is not None:
                    return await self._take_on_loop(self._loop_connections, key, capacity, rate, now)
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._pool, self.take_blocking, key, capacity, rate, now)
        except TimeoutError as exc:
            raise UnavailableError(f"{_WHAT}: no answer within {self.timeout + 1:g} s") from exc

    async def _take_on_loop(
        self, connections: LoopConnections, key: str, capacity: float, rate: float, now: float
    ) -> float:
        parameters = {"key": bucket_id(key), "capacity": capacity, "rate": rate, "now": now}
        try:
            tokens, admitted = await connections.fetchone(self._take_sql, parameters)
            if time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + SWEEP_INTERVAL
                await connections.execute(self._sweep_sql, {"now": now})
        except self._driver_error as exc:
            raise unavailable(_WHAT, exc) from exc
        return 0.0 if admitted else (1.0 - float(tokens)) / rate

    def take_blocking(self, key: str, capacity: float, rate: float, now: float) -> float:
        """:meth:`take`, on the calling thread (one connection per thread).

        Raises:
            UnavailableError: the store failed; the connection is dropped and the next take reconnects.
        """
        if self._clock == "database" and not self._postgres:
            now = time.time()  # SQLite: the host's clock, which every process on it shares
        parameters = {"key": bucket_id(key), "capacity": capacity, "rate": rate, "now": now}
        try:
            cursor = self._connection().cursor()
            try:
                cursor.execute(self._take_sql, parameters)
                tokens, admitted = cursor.fetchall()[0]
                if time.monotonic() >= self._next_sweep:
                    self._sweep(cursor, now)
            finally:
                cursor.close()
        except self._driver_error as exc:
            self._drop()
            raise unavailable(_WHAT, exc) from exc
        return 0.0 if admitted else (1.0 - float(tokens)) / rate

    def _sweep(self, cursor: Any, now: float) -> None:
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        cursor.execute(self._sweep_sql, {"now": now})

    def _connection(self) -> Any:
        connection: PoolProxiedConnection | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        if self._closed:
            raise UnavailableError(f"{_WHAT} is closed")
        connection = self._engine.raw_connection()
        try:
            driver = connection.driver_connection
            # One statement per take: autocommit, so a take is one round trip (no BEGIN, no COMMIT).
            if self._postgres:
                driver.autocommit = True  # type: ignore[union-attr]
            else:
                driver.isolation_level = None  # type: ignore[union-attr]
            cursor = connection.cursor()
            for statement in self._bound_sql:
                cursor.execute(statement)
            cursor.close()
        except BaseException:
            with suppress(Exception):
                connection.invalidate()
            raise
        self._local.connection = connection
        with self._lock:
            self._connections.append(connection)
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with self._lock, suppress(ValueError):
                self._connections.remove(connection)
            with suppress(Exception):
                connection.invalidate()  # never back to the pool: it carries this store's timeouts

    def close(self) -> None:
        """Stop the threads and close every connection."""
        self._closed = True
        if self._loop_connections is not None:
            self._loop_connections.close()
        self._pool.shutdown(wait=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with suppress(Exception):
                connection.invalidate()
        self._engine.dispose()

    def ping(self) -> str | None:
        """None when the bucket table answers a read within ``timeout``, else why not (blocking, for ``/readyz``)."""
        try:
            cursor = self._connection().cursor()
            try:
                cursor.execute("SELECT count(*) FROM rate_bucket WHERE key = ''")
                cursor.fetchall()
            finally:
                cursor.close()
        except (self._driver_error, UnavailableError) as exc:
            self._drop()
            return f"{_WHAT} unavailable: {type(exc).__name__}: {exc}"
        return None

    def levels(self) -> list[dict[str, Any]]:
        """Every bucket row (tests and operators): key, tokens, at, capacity, rate, admitted."""
        from sqlalchemy import select
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self._engine.connect() as connection:
                return [dict(row._mapping) for row in connection.execute(select(RATE_BUCKET_TABLE))]
        except SQLAlchemyError as exc:
            raise unavailable(_WHAT, exc) from exc
