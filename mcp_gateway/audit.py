"""The audit trail: one hash-chained row per decision, committed before the response goes out.

Rows are appended with a pre-built SQLAlchemy Core statement on the event loop (an ORM session costs several
times more per row, see docs/architecture.md). Each row carries the hash of the previous row and its own
hash over a canonical encoding; ``prev_hash`` is unique, so two writers can never fork the chain. Writers are
serialised by the database itself (SQLite ``BEGIN IMMEDIATE``; a transaction-scoped advisory lock on
PostgreSQL), so several processes can share one trail.

If a row cannot be written, :meth:`AuditLog.record` raises :class:`UnavailableError` and the call is refused.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection
from sqlmodel import Field, SQLModel

from mcp_gateway.errors import UnavailableError

__all__ = ["GENESIS", "AuditEntry", "AuditLog", "AuditRecord", "record_hash"]

GENESIS = "0" * 64
_PG_LOCK_KEY = 0x6D6370_67776179  # "mcp" "gway": one advisory lock for the chain head


class AuditRecord(SQLModel, table=True):
    __tablename__ = "audit_record"

    id: int | None = Field(default=None, primary_key=True)
    ts: str
    event: str
    request_id: str | None = Field(default=None, index=True)
    trace_id: str | None = Field(default=None, index=True)
    subject: str | None = None
    roles: str | None = None
    catalog: str | None = None
    tool: str | None = None
    tool_digest: str | None = None
    decision: str
    rule: str | None = None
    args_digest: str | None = None
    outcome: str
    latency_ms: float | None = None
    policy_version: str | None = None
    detail: str | None = None
    prev_hash: str = Field(unique=True)
    hash: str


_TABLE = AuditRecord.__table__  # type: ignore[attr-defined]
_HASHED = tuple(column.name for column in _TABLE.columns if column.name not in ("id", "hash"))


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What a caller of :meth:`AuditLog.record` supplies; time and hashes are added by the log."""

    event: str
    decision: str
    outcome: str
    request_id: str | None = None
    trace_id: str | None = None
    subject: str | None = None
    roles: Sequence[str] | None = None
    catalog: str | None = None
    tool: str | None = None
    tool_digest: str | None = None
    rule: str | None = None
    args_digest: str | None = None
    latency_ms: float | None = None
    policy_version: str | None = None
    detail: dict[str, Any] | None = None


_ENTRY_FIELDS = tuple(item.name for item in fields(AuditEntry))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(row: dict[str, Any]) -> str:
    """The hash of one row: sha256 over the canonical JSON of every column but ``id`` and ``hash``."""
    return hashlib.sha256(_canonical({name: row.get(name) for name in _HASHED}).encode()).hexdigest()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's implicit BEGIN is deferred, and a deferred transaction that reads the chain head and then
    # writes can interleave with another writer; the writer issues BEGIN IMMEDIATE instead.
    dbapi_connection.isolation_level = None  # we issue BEGIN IMMEDIATE ourselves
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


class AuditLog:
    """Appends rows to the trail and reads them back for the CLI."""

    def __init__(self, database_url: str) -> None:
        """Open (and create if needed) the trail.

        Raises:
            UnavailableError: the database cannot be reached or the table cannot be created.
        """
        self._engine = _create_engine(database_url)
        self._postgres = self._engine.dialect.name == "postgresql"
        dialect = self._engine.dialect
        # The hot path uses the driver directly, so its exceptions arrive untranslated.
        self._driver_error: type[Exception] = dialect.loaded_dbapi.Error
        columns = [name for name in _TABLE.columns.keys() if name != "id"]
        compiled = insert(_TABLE).compile(dialect=dialect, column_keys=columns)
        self._insert_sql = compiled.string
        order = compiled.positiontup
        self._parameters: Callable[[dict[str, Any]], Any] = (
            (lambda row: tuple(row[name] for name in order)) if order else (lambda row: row)
        )
        head = select(_TABLE.c.hash).order_by(_TABLE.c.id.desc()).limit(1)
        self._head_sql = head.compile(dialect=dialect, compile_kwargs={"literal_binds": True}).string
        # SQLite: take the write lock up front. PostgreSQL: the driver has opened a transaction already, and a
        # transaction-scoped advisory lock serialises appenders across replicas.
        self._begin_sql = f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})" if self._postgres else "BEGIN IMMEDIATE"
        self._ping = select(1)
        self._lock = threading.Lock()
        self._writer: PoolProxiedConnection | None = None
        try:
            try:
                SQLModel.metadata.create_all(self._engine, tables=[_TABLE])
            except SQLAlchemyError:
                # create_all checks, then creates: a process starting at the same moment (two stdio sessions
                # launched together) can create the table in between. Checking again settles it; a real
                # failure fails again.
                SQLModel.metadata.create_all(self._engine, tables=[_TABLE])
        except SQLAlchemyError as exc:
            raise UnavailableError(f"audit database unavailable: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._reset_writer()
        self._engine.dispose()

    def record(self, entry: AuditEntry) -> str:
        """Append one row and commit it; returns the row's hash.

        Raises:
            UnavailableError: the row could not be committed. The caller must refuse the call.
        """
        row = {name: getattr(entry, name) for name in _ENTRY_FIELDS}
        row["roles"] = _canonical(list(entry.roles)) if entry.roles is not None else None
        row["detail"] = _canonical(entry.detail) if entry.detail is not None else None
        if entry.latency_ms is not None:
            # Always a float: the database hands back a float, and the hash must recompute from stored values.
            row["latency_ms"] = round(float(entry.latency_ms), 3)
        try:
            with self._lock:
                return self._append(row)
        except (SQLAlchemyError, self._driver_error) as exc:
            self._reset_writer()
            raise UnavailableError(f"audit write failed: {type(exc).__name__}: {exc}") from exc

    def _append(self, row: dict[str, Any]) -> str:
        # The hot path talks to the driver with SQL compiled once at start-up: SQLAlchemy's per-execute
        # bookkeeping costs more than SQLite's own insert and commit (docs/architecture.md has the figures).
        if self._writer is None:
            self._writer = self._engine.raw_connection()
        cursor = self._writer.cursor()
        try:
            cursor.execute(self._begin_sql)
            # Read the head inside the write transaction: another process may have appended since.
            cursor.execute(self._head_sql)
            head = cursor.fetchone()
            row["ts"] = datetime.now(UTC).isoformat(timespec="microseconds")
            row["prev_hash"] = head[0] if head else GENESIS
            row["hash"] = record_hash(row)
            cursor.execute(self._insert_sql, self._parameters(row))
            self._writer.commit()
        except BaseException:
            self._reset_writer()
            raise
        finally:
            cursor.close()
        return str(row["hash"])

    def _reset_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with suppress(Exception):
                writer.rollback()
            with suppress(Exception):
                writer.close()

    def ping(self) -> str | None:
        """None when the trail is reachable, else why not."""
        try:
            with self._engine.connect() as connection:
                connection.execute(self._ping)
        except SQLAlchemyError as exc:
            return f"audit database unavailable: {type(exc).__name__}"
        return None

    def tail(self, count: int) -> list[dict[str, Any]]:
        """The last ``count`` rows, oldest first."""
        query = select(_TABLE).order_by(_TABLE.c.id.desc()).limit(count)
        with self._engine.connect() as connection:
            rows = [dict(row) for row in connection.execute(query).mappings()]
        return rows[::-1]

    def iter_rows(self, since: str | None = None, *, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every row in chain order, streamed in batches (never the whole trail in memory)."""
        last_id = 0
        while True:
            query = select(_TABLE).where(_TABLE.c.id > last_id).order_by(_TABLE.c.id).limit(batch)
            if since is not None:
                query = query.where(_TABLE.c.ts >= since)
            with self._engine.connect() as connection:
                rows = [dict(row) for row in connection.execute(query).mappings()]
            if not rows:
                return
            yield from rows
            last_id = rows[-1]["id"]
