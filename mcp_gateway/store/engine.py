"""Engines: one factory for every database the gateway opens, and table creation that is safe under a race.

The audit trail and the break-glass tables live in one database (``database_url``): SQLite for one host,
PostgreSQL when replicas share a trail. Only this package imports the database libraries (ruff's banned-api
enforces it); the rest of the gateway sees rows as dicts and failures as :class:`UnavailableError`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlmodel import SQLModel

from mcp_gateway.errors import UnavailableError
from mcp_gateway.store.walcheckpoint import BACKSTOP_PAGES

__all__ = ["BUSY_TIMEOUT_MS", "Durability", "create_tables", "open_engine", "unavailable"]

Durability = Literal["process", "power"]

# How long a connection waits for another writer's lock before SQLite answers "database is locked". Connections
# that serve a call set their own, shorter, bound (see store/chain.py and store/probe.py).
BUSY_TIMEOUT_MS = 5000
_PG_DDL_LOCK = 0x6D6370_64646C  # "mcp" "ddl": one advisory lock for table creation


def unavailable(what: str, exc: BaseException) -> UnavailableError:
    """The error for a database failure: names the store and the driver's complaint, never a row's content."""
    return UnavailableError(f"{what} unavailable: {type(exc).__name__}: {exc}")


def _sqlite_file(url: str) -> str:
    """The file of a ``sqlite:///`` URL ("" or ":memory:" for an in-memory database, "" for other databases)."""
    if not url.startswith("sqlite") or "///" not in url:
        return ""  # not SQLite, or sqlite:// (in memory)
    return url.split("///", 1)[-1]


def _busy_timeout(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


def _trail_pragmas(durability: Durability) -> Callable[[Any, Any], None]:
    synchronous = "FULL" if durability == "power" else "NORMAL"

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's implicit BEGIN is deferred, and a deferred transaction that reads the chain head and then
        # writes can interleave with another writer; the chain writer issues BEGIN IMMEDIATE instead.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # The busy timeout first: switching a new database to WAL takes a lock another process may hold.
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        # WAL checkpoints run on a background thread (walcheckpoint.py); this is only a backstop, should that
        # thread fall behind, so the WAL stays bounded.
        cursor.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        cursor.close()

    return on_connect


def open_engine(url: str, durability: Durability | None = None, *, connect_timeout: float | None = None) -> Engine:
    """An engine for ``url``. Connecting is lazy: :func:`create_tables` is the first to reach the database.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path`` or ``postgresql+psycopg://...``).
        durability: for the audit trail: SQLite in WAL mode with ``synchronous=NORMAL`` (``process``: a committed
            row survives the gateway being killed) or ``FULL`` (``power``: it survives power loss), autocommit at
            the driver (the chain writer opens its own transactions). None (the break-glass tables): SQLite's
            defaults, with only the busy timeout set so that several processes wait for each other.
        connect_timeout: PostgreSQL: seconds a new connection may take (libpq rounds it up to 2); None: no bound.
    """
    path = _sqlite_file(url)
    if url.startswith("sqlite"):
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _busy_timeout if durability is None else _trail_pragmas(durability))
        return engine
    # PostgreSQL keeps its default synchronous_commit=on at both levels: a commit is flushed to the WAL.
    connect_args = {} if connect_timeout is None else {"connect_timeout": max(2, math.ceil(connect_timeout))}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def create_tables(engine: Engine, tables: Sequence[Table], what: str) -> None:
    """Create ``tables`` if missing, safely when several processes open a new database at the same moment.

    create_all checks, then creates, table by table; on SQLite (autocommit here) another process could create a
    table in between, so the check and the creation run under SQLite's write lock and a second process waits
    (busy_timeout), then finds the tables. SQLite can also answer "database is locked" at once, without waiting
    out the busy timeout, in some lock upgrades (switching a brand-new file to WAL among several openers), so
    start-up waits briefly and tries again. PostgreSQL DDL is transactional, and creators take turns under an
    advisory lock.

    Raises:
        UnavailableError: the database stays locked, or cannot be reached or written.
    """
    for attempt in range(5):
        try:
            if engine.dialect.name != "sqlite":
                with engine.begin() as connection:
                    # Replicas starting at once on a new database: CREATE TABLE IF NOT EXISTS races on PostgreSQL's
                    # catalog (a duplicate key in pg_type), so creators take turns; the second finds the tables.
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_DDL_LOCK})")
                    SQLModel.metadata.create_all(connection, tables=list(tables))
                return
            with engine.connect() as connection:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    SQLModel.metadata.create_all(connection, tables=list(tables))
                except BaseException:
                    connection.exec_driver_sql("ROLLBACK")
                    raise
                connection.exec_driver_sql("COMMIT")
            return
        except OperationalError as exc:
            if attempt == 4 or engine.dialect.name != "sqlite" or "locked" not in str(exc):
                raise unavailable(what, exc) from exc
            engine.dispose()
            time.sleep(0.05 * 2**attempt)
        except SQLAlchemyError as exc:
            raise unavailable(what, exc) from exc
