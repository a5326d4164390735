"""PostgreSQL on the event loop: a few psycopg async connections per loop, for one-statement round trips.

A thread hop costs more than a loopback round trip to PostgreSQL on a busy machine (measured in
bench/replica_bench.py), so a statement that is one round trip runs on an async connection of the calling
loop instead: the loop waits on the socket, never on a thread. Connections belong to the loop that opened them
(psycopg's async connections cannot move between loops), so each loop has its own, up to ``size`` of them.
A connection that fails, or whose statement is cancelled mid-way, is closed, never reused.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any

import psycopg

__all__ = ["LoopConnections"]


class _Pool:
    def __init__(self, size: int) -> None:
        self.slots = asyncio.Semaphore(size)
        self.idle: list[psycopg.AsyncConnection[Any]] = []


class LoopConnections:
    """Autocommit connections to one database, ``size`` per event loop, each prepared by ``setup`` statements."""

    def __init__(self, conninfo: str, *, size: int, connect_timeout: float, setup: Sequence[str]) -> None:
        self._conninfo = conninfo
        self._size = size
        self._connect_timeout = max(2, math.ceil(connect_timeout))  # libpq's smallest
        self._setup = tuple(setup)
        self._pools: dict[asyncio.AbstractEventLoop, _Pool] = {}
        self._lock = threading.Lock()
        self._open: set[psycopg.AsyncConnection[Any]] = set()
        self._closed = False

    async def fetchone(self, sql: str, parameters: Mapping[str, Any]) -> tuple[Any, ...]:
        """Run one statement and return its first row.

        Raises:
            psycopg.Error: connecting or the statement failed (the connection is closed).
        """
        pool = self._pool()
        async with pool.slots:
            connection = pool.idle.pop() if pool.idle else await self._connect()
            try:
                cursor = connection.cursor()
                await cursor.execute(sql, parameters)
                row = await cursor.fetchone()
                await cursor.close()
            except BaseException:
                self._discard(connection)
                raise
            if self._closed:
                self._discard(connection)
            else:
                pool.idle.append(connection)
        if row is None:
            raise psycopg.ProgrammingError("the statement returned no row")
        return tuple(row)

    async def execute(self, sql: str, parameters: Mapping[str, Any]) -> None:
        """Run one statement, ignoring its result (the sweep)."""
        pool = self._pool()
        async with pool.slots:
            connection = pool.idle.pop() if pool.idle else await self._connect()
            try:
                await connection.execute(sql, parameters)
            except BaseException:
                self._discard(connection)
                raise
            pool.idle.append(connection)

    def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        with self._lock:
            pool = self._pools.get(loop)
            if pool is not None:
                return pool
            # A new loop (tests, benchmarks and the CLI run several in turn): the connections of loops that have
            # closed can never be used again, so they are closed now rather than held until close().
            ended = [old for old in self._pools if old.is_closed()]
            for old in ended:
                for connection in self._pools.pop(old).idle:
                    self._open.discard(connection)
                    with suppress(Exception):
                        connection.pgconn.finish()
            pool = self._pools[loop] = _Pool(self._size)
            return pool

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._closed:
            raise psycopg.OperationalError("the connections are closed")
        connection = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=self._connect_timeout
        )
        with self._lock:
            self._open.add(connection)
        try:
            for statement in self._setup:
                await connection.execute(statement)
        except BaseException:
            self._discard(connection)
            raise
        return connection

    def _discard(self, connection: psycopg.AsyncConnection[Any]) -> None:
        with self._lock:
            self._open.discard(connection)
        with suppress(Exception):
            # The libpq connection is closed at once, whatever loop it belongs to (that loop may be gone).
            connection.pgconn.finish()

    def close(self) -> None:
        """Close every connection of every loop."""
        self._closed = True
        with self._lock:
            connections, self._open = list(self._open), set()
            self._pools = {}
        for connection in connections:
            with suppress(Exception):
                connection.pgconn.finish()
