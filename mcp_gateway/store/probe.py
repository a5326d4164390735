"""Readiness: does a write to the trail's database commit now, within a bound?

A reachable database is not enough: a trail whose file system is full, whose file is read-only, or whose write
lock another process holds refuses every call while a read still works. The probe takes the write lock (waiting
at most ``timeout`` seconds), inserts a record into the trail's own table inside a savepoint it rolls back (so
whatever refuses records, a trigger, a constraint, a damaged table, refuses it too), and rewrites one row of its
own table in a committed transaction (so a full disk or a read-only file shows). ``/readyz`` thus says what a
call would meet. It runs off the event loop (the caller's job). The rolled-back record never reaches the chain.
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, Engine, delete, insert
from sqlalchemy.exc import SQLAlchemyError

from mcp_gateway.store.engine import BUSY_TIMEOUT_MS
from mcp_gateway.store.tables import PROBE_TABLE, RECORD_TABLE

__all__ = ["probe_write"]


def probe_write(engine: Engine, timeout: float) -> str | None:
    """None when a write commits within ``timeout`` seconds, else why not (the driver's complaint, no data)."""
    milliseconds = max(1, int(timeout * 1000))
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                _sqlite_write(connection, milliseconds)
            else:
                with connection.begin():
                    connection.exec_driver_sql(f"SET LOCAL lock_timeout = {milliseconds}")
                    connection.exec_driver_sql(f"SET LOCAL statement_timeout = {milliseconds}")
                    _rewrite(connection)
    except SQLAlchemyError as exc:
        return f"audit database not writable: {type(exc).__name__}: {getattr(exc, 'orig', exc)}"
    return None


def _sqlite_write(connection: Connection, milliseconds: int) -> None:
    # The trail's connections run in driver autocommit (the chain writer issues BEGIN IMMEDIATE itself), so the
    # transaction is spelt out here too, and the busy timeout put back before the connection returns to the pool.
    connection.exec_driver_sql(f"PRAGMA busy_timeout={milliseconds}")
    try:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            _rewrite(connection)
        except BaseException:
            connection.exec_driver_sql("ROLLBACK")
            raise
        connection.exec_driver_sql("COMMIT")
    finally:
        connection.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


# What a record needs to be inserted; id -1 is never a chain id (they start at 1), and the savepoint is rolled back.
_TRIAL = {"id": -1, "ts": "", "event": "readiness.probe", "decision": "", "outcome": "", "prev_hash": "", "hash": ""}


def _rewrite(connection: Connection) -> None:
    savepoint = connection.begin_nested() if connection.dialect.name != "sqlite" else None
    if savepoint is None:
        connection.exec_driver_sql("SAVEPOINT readiness_probe")
    try:
        connection.execute(insert(RECORD_TABLE).values(**_TRIAL))
    finally:
        if savepoint is None:
            connection.exec_driver_sql("ROLLBACK TO readiness_probe")
            connection.exec_driver_sql("RELEASE readiness_probe")
        else:
            savepoint.rollback()
    connection.execute(delete(PROBE_TABLE))
    connection.execute(insert(PROBE_TABLE).values(id=1, ts=time.time()))
