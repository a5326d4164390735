"""The audit trail: one hash-chained row per decision, committed before the response goes out.

Rows are appended with a pre-built SQLAlchemy Core statement on the event loop (an ORM session costs several
times more per row, see docs/architecture.md). Each row carries the hash of the previous row and its own
hash over a canonical encoding. The writer gives each row the id after the head's, read in the same
transaction, so the primary key itself stops a fork: two rows can never both extend one head. (Earlier
versions made ``prev_hash`` unique instead; that index took a random page per commit, and a growing share of
each commit as the trail grew. Trails created by them keep it.) Writers are serialised by the database itself
(SQLite ``BEGIN IMMEDIATE``; a transaction-scoped advisory lock on PostgreSQL), so several processes can share
one trail.

If a row cannot be written, :meth:`AuditLog.record` raises :class:`UnavailableError` and the call is refused.

Durability (``audit.durability``): ``process`` (SQLite ``synchronous=NORMAL``: a committed row survives the
gateway being killed) or ``power`` (``synchronous=FULL``: it survives power loss, at one fsync per commit).
:meth:`AuditLog.append` is the call path's way in and uses group commit: at ``process`` an idle trail commits
the row inline on the event loop (about 50 µs, no thread hop); when several callers are waiting, or at
``power``, their rows go to one transaction run on a worker thread, so one fsync covers many callers. Every
caller still gets its answer only after its own row is committed, and rows keep one linear chain.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event, insert, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection
from sqlmodel import Field, SQLModel

from mcp_gateway.errors import UnavailableError
from mcp_gateway.store.walcheckpoint import BACKSTOP_PAGES, WalCheckpointer

__all__ = [
    "GENESIS",
    "AuditCheckpoint",
    "AuditEntry",
    "AuditLog",
    "AuditRecord",
    "Durability",
    "create_tables",
    "new_request_id",
    "record_hash",
]

Durability = Literal["process", "power"]

GENESIS = "0" * 64
# After another writer was seen (several processes on one trail), this many appends take the locked path
# without checking for a chance of the one-statement path (see AuditLog._append_alone).
_CONTENDED_SKIP = 16
logger = logging.getLogger(__name__)
_PG_LOCK_KEY = 0x6D6370_67776179  # "mcp" "gway": one advisory lock for the chain head


class AuditRecord(SQLModel, table=True):
    __tablename__ = "audit_record"

    id: int | None = Field(default=None, primary_key=True)
    ts: str
    event: str
    # Not indexed: an index on these random ids dirties one more page per commit (about 15 µs of a 40 µs row).
    # `audit trace` scans instead (0.14 s per million rows from the page cache); see docs/architecture.md.
    request_id: str | None = None
    trace_id: str | None = None
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
    prev_hash: str
    hash: str


class AuditCheckpoint(SQLModel, table=True):
    """A signed statement that the chain's record ``record_id`` had hash ``record_hash`` (see checkpoint.py)."""

    __tablename__ = "audit_checkpoint"

    id: int | None = Field(default=None, primary_key=True)
    ts: str
    record_id: int
    record_hash: str
    key_id: str
    signature: str


_TABLE = AuditRecord.__table__  # type: ignore[attr-defined]
_CHECKPOINTS = AuditCheckpoint.__table__  # type: ignore[attr-defined]
_HASHED = tuple(column.name for column in _TABLE.columns if column.name not in ("id", "hash"))


@dataclass(slots=True)
class AuditEntry:
    """What a caller of :meth:`AuditLog.record` supplies; time and hashes are added by the log.

    Mutable: the call path fills one entry in as the call proceeds (``dataclasses.replace`` at each stage cost
    about 25 µs per call). :meth:`AuditLog.append` and :meth:`AuditLog.record` copy it into a row at once, so
    a later change never alters a row already handed over."""

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


def new_request_id() -> str:
    """A fresh request id: the key that joins a request's rows in the trail."""
    return uuid.uuid4().hex


@dataclass(slots=True)
class _Waiter:
    row: dict[str, Any]
    future: asyncio.Future[str]
    loop: asyncio.AbstractEventLoop


def _settle(waiters: list[_Waiter], failure: UnavailableError | None) -> None:
    for waiter in waiters:
        if waiter.future.done():
            continue  # the caller was cancelled; its row is committed (or not) all the same
        if failure is None:
            waiter.future.set_result(str(waiter.row["hash"]))
        else:
            waiter.future.set_exception(UnavailableError(str(failure)))


def _row(entry: AuditEntry) -> dict[str, Any]:
    row = {name: getattr(entry, name) for name in _ENTRY_FIELDS}
    row["roles"] = _canonical(list(entry.roles)) if entry.roles is not None else None
    row["detail"] = _canonical(entry.detail) if entry.detail is not None else None
    if entry.latency_ms is not None:
        # Always a float: the database hands back a float, and the hash must recompute from stored values.
        row["latency_ms"] = round(float(entry.latency_ms), 3)
    return row


# The canonical encoding (what json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# gives), with one encoder for the process rather than one per call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_canonical: Callable[[Any], str] = _ENCODER.encode


def record_hash(row: dict[str, Any]) -> str:
    """The hash of one row: sha256 over the canonical JSON of every column but ``id`` and ``hash``."""
    return hashlib.sha256(_ENCODER.encode({name: row.get(name) for name in _HASHED}).encode()).hexdigest()


def create_tables(engine: Engine, tables: Sequence[Any], what: str) -> None:
    """Create ``tables`` if missing, safely when several processes open a new database at the same moment.

    create_all checks, then creates, table by table; on SQLite (autocommit here) another process could create a
    table in between, so the check and the creation run under SQLite's write lock and a second process waits
    (busy_timeout), then finds the tables. SQLite can also answer "database is locked" at once, without waiting
    out the busy timeout, in some lock upgrades (switching a brand-new file to WAL among several openers), so
    start-up waits briefly and tries again. PostgreSQL DDL is transactional.

    Raises:
        UnavailableError: the database stays locked, or cannot be reached or written.
    """
    for attempt in range(5):
        try:
            if engine.dialect.name != "sqlite":
                SQLModel.metadata.create_all(engine, tables=list(tables))
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
                raise UnavailableError(f"{what} unavailable: {type(exc).__name__}: {exc}") from exc
            engine.dispose()
            time.sleep(0.05 * 2**attempt)
        except SQLAlchemyError as exc:
            raise UnavailableError(f"{what} unavailable: {type(exc).__name__}: {exc}") from exc


def _sqlite_pragmas(durability: Durability) -> Callable[[Any, Any], None]:
    synchronous = "FULL" if durability == "power" else "NORMAL"

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's implicit BEGIN is deferred, and a deferred transaction that reads the chain head and then
        # writes can interleave with another writer; the writer issues BEGIN IMMEDIATE instead.
        dbapi_connection.isolation_level = None  # we issue BEGIN IMMEDIATE ourselves
        cursor = dbapi_connection.cursor()
        # The busy timeout first: switching a new database to WAL takes a lock another process may hold.
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        # WAL checkpoints run on a background thread (walcheckpoint.py); this is only a backstop, should that
        # thread fall behind, so the WAL stays bounded.
        cursor.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        cursor.close()

    return on_connect


def _sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///`` URL ("" or ":memory:" for an in-memory database)."""
    if not url.startswith("sqlite") or "///" not in url:
        return ""  # not SQLite, or sqlite:// (in memory)
    return url.split("///", 1)[-1]


def _create_engine(url: str, durability: Durability) -> Engine:
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas(durability))
        return engine
    # PostgreSQL keeps its default synchronous_commit=on at both levels: a commit is flushed to the WAL.
    return create_engine(url, pool_pre_ping=True)


class AuditLog:
    """Appends rows to the trail and reads them back for the CLI."""

    def __init__(self, database_url: str, *, durability: Durability = "process", max_batch: int = 256) -> None:
        """Open (and create if needed) the trail.

        Raises:
            UnavailableError: the database cannot be reached or the table cannot be created.
        """
        self.durability: Durability = durability
        self._max_batch = max_batch
        self._engine = _create_engine(database_url, durability)
        self._postgres = self._engine.dialect.name == "postgresql"
        dialect = self._engine.dialect
        # The hot path uses the driver directly, so its exceptions arrive untranslated.
        self._driver_error: type[Exception] = dialect.loaded_dbapi.Error
        columns = list(_TABLE.columns.keys())  # with id: the writer assigns it (see the module docstring)
        compiled = insert(_TABLE).compile(dialect=dialect, column_keys=columns)
        self._insert_sql = compiled.string
        order = compiled.positiontup
        self._parameters: Callable[[dict[str, Any]], Any] = (
            (lambda row: tuple(row[name] for name in order)) if order else (lambda row: row)
        )
        head = select(_TABLE.c.id, _TABLE.c.hash).order_by(_TABLE.c.id.desc()).limit(1)
        self._head_sql = head.compile(dialect=dialect, compile_kwargs={"literal_binds": True}).string
        # SQLite: take the write lock up front. PostgreSQL: the driver has opened a transaction already, and a
        # transaction-scoped advisory lock serialises appenders across replicas.
        self._begin_sql = f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})" if self._postgres else "BEGIN IMMEDIATE"
        self._ping = select(1)
        self._lock = threading.Lock()
        self._writer: PoolProxiedConnection | None = None
        # The head this connection last wrote, and SQLite's data_version then (see _append_alone).
        self._head: tuple[int, str, int] | None = None
        self._contended = 0  # locked appends left before the next lone-writer attempt
        # Group commit: rows waiting for the next transaction, and whether a worker is draining them.
        self._pending: list[_Waiter] = []
        self._wakeup = threading.Condition()
        self._committer: threading.Thread | None = None
        self._closing = False
        # Background WAL checkpoints, for file-backed SQLite only (see walcheckpoint.py).
        wal = not self._postgres and _sqlite_path(database_url) not in ("", ":memory:")
        self._wal = WalCheckpointer(self._engine) if wal else None
        create_tables(self._engine, [_TABLE, _CHECKPOINTS], "audit database")

    def close(self) -> None:
        with self._wakeup:
            self._closing = True
            self._wakeup.notify_all()
        if self._committer is not None:
            self._committer.join(timeout=30)
        if self._wal is not None:
            self._wal.close()
        with self._lock:
            self._reset_writer()
        self._engine.dispose()

    def record(self, entry: AuditEntry) -> str:
        """Append one row and commit it, blocking; returns the row's hash. For start-up, reloads and the CLI.

        Raises:
            UnavailableError: the row could not be committed. The caller must refuse the call.
        """
        row = _row(entry)
        self._commit_rows([row])
        return str(row["hash"])

    async def append(self, entry: AuditEntry) -> str:
        """Append one row; returns its hash once the row is committed (group commit, see the module docstring).

        Raises:
            UnavailableError: the row could not be committed. The caller must refuse the call.
        """
        row = _row(entry)
        if self.durability == "process" and not self._pending and self._lock.acquire(blocking=False):
            # Fast path: nobody is waiting, so commit now on the loop rather than paying a thread hop.
            try:
                self._commit_rows([row], locked=True)
            finally:
                self._lock.release()
            return str(row["hash"])
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        with self._wakeup:
            if self._closing:
                raise UnavailableError("audit trail is closed")
            self._pending.append(_Waiter(row, future, loop))
            if self._committer is None:
                self._committer = threading.Thread(target=self._commit_loop, name="audit-group-commit", daemon=True)
                self._committer.start()
            self._wakeup.notify()
        return await future

    def _commit_loop(self) -> None:
        """The group-commit thread: whatever is waiting when a commit ends goes into the next transaction."""
        while True:
            with self._wakeup:
                while not self._pending and not self._closing:
                    self._wakeup.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            failure: UnavailableError | None = None
            try:
                self._commit_rows([waiter.row for waiter in batch])
            except UnavailableError as exc:
                failure = exc
            by_loop: dict[asyncio.AbstractEventLoop, list[_Waiter]] = {}
            for waiter in batch:
                by_loop.setdefault(waiter.loop, []).append(waiter)
            for loop, waiters in by_loop.items():
                with suppress(RuntimeError):  # that loop has closed: nobody is waiting any more
                    loop.call_soon_threadsafe(_settle, waiters, failure)

    def _commit_rows(self, rows: list[dict[str, Any]], *, locked: bool = False) -> None:
        try:
            if locked:
                self._append(rows)
            else:
                with self._lock:
                    self._append(rows)
        except (SQLAlchemyError, self._driver_error) as exc:
            # _append has reset the writer already, under the lock: resetting here, outside it, could roll back
            # and close the connection under another caller's transaction.
            raise UnavailableError(f"audit write failed: {type(exc).__name__}: {exc}") from exc

    def _append(self, rows: list[dict[str, Any]]) -> None:
        # The hot path talks to the driver with SQL compiled once at start-up: SQLAlchemy's per-execute
        # bookkeeping costs more than SQLite's own insert and commit (docs/architecture.md has the figures).
        if self._writer is None:
            self._writer = self._engine.raw_connection()
        cursor = self._writer.cursor()
        try:
            if self._head is None or len(rows) > 1 or not self._append_alone(cursor, rows[0]):
                self._append_locked(cursor, rows)
        except BaseException:
            self._reset_writer()
            raise
        finally:
            cursor.close()
        if self._wal is not None:
            self._wal.written(len(rows))

    def _append_locked(self, cursor: Any, rows: list[dict[str, Any]]) -> None:
        assert self._writer is not None  # noqa: S101 - opened by the caller
        cursor.execute(self._begin_sql)
        # Read the head inside the write transaction: another process may have appended since.
        cursor.execute(self._head_sql)
        head = cursor.fetchone()
        last_id, prev = (int(head[0]), head[1]) if head else (0, GENESIS)
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        for row in rows:
            row["ts"] = ts
            last_id += 1
            row["id"] = last_id
            row["prev_hash"] = prev
            row["hash"] = prev = record_hash(row)
        if len(rows) == 1:
            cursor.execute(self._insert_sql, self._parameters(rows[0]))
        else:
            cursor.executemany(self._insert_sql, [self._parameters(row) for row in rows])
        if self._postgres:
            # Keep the id sequence in step: an older gateway (or any tool) inserting with the default id must get
            # the next one, not collide with ours and be refused.
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{_TABLE.name}', 'id'), {int(last_id)})")
            self._writer.commit()
            return
        self._writer.commit()
        if self._contended:
            # Others were writing a moment ago: skip the next few chances (each costs a PRAGMA) before trying again.
            self._contended -= 1
            return
        try:
            cursor.execute("PRAGMA data_version")
            self._head = (last_id, prev, cursor.fetchone()[0])
        except self._driver_error as exc:  # the rows are committed: only the next chance is lost
            logger.warning("audit: PRAGMA data_version failed after a commit: %s", exc)

    def _append_alone(self, cursor: Any, row: dict[str, Any]) -> bool:
        """SQLite, one row, nobody else has written since this connection's last commit: one autocommitted
        INSERT extending the head it remembers, instead of BEGIN IMMEDIATE, read the head, INSERT, COMMIT.

        ``PRAGMA data_version`` changes when another connection commits, so a remembered head is only used while
        it is current; and if another writer got in between the check and the INSERT, the INSERT claims an id that
        is taken and fails on the primary key. Either way the caller falls back to the locked path. Saves 25-45 µs
        per row inside a serving gateway.
        """
        assert self._head is not None  # noqa: S101 - checked by the caller
        last_id, prev, version = self._head
        self._head = None  # until this row is in
        try:
            cursor.execute("PRAGMA data_version")
            current = cursor.fetchone()[0]
        except self._driver_error:
            return False  # nothing written: the locked path decides (and fails closed if the database is gone)
        if current != version:
            self._contended = _CONTENDED_SKIP
            return False
        row["ts"] = datetime.now(UTC).isoformat(timespec="microseconds")
        row["id"] = last_id + 1
        row["prev_hash"] = prev
        row["hash"] = record_hash(row)
        try:
            cursor.execute(self._insert_sql, self._parameters(row))
        except self._driver_error:
            self._contended = _CONTENDED_SKIP
            return False
        self._head = (row["id"], row["hash"], version)
        return True

    def _reset_writer(self) -> None:
        self._head = None
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

    def head(self) -> tuple[int, str] | None:
        """The last record's id and hash, or None for an empty trail."""
        query = select(_TABLE.c.id, _TABLE.c.hash).order_by(_TABLE.c.id.desc()).limit(1)
        with self._engine.connect() as connection:
            found = connection.execute(query).first()
        return (int(found[0]), str(found[1])) if found else None

    def add_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store a signed checkpoint (see checkpoint.py).

        Raises:
            UnavailableError: it could not be stored.
        """
        values = {key: checkpoint[key] for key in ("ts", "record_id", "record_hash", "key_id", "signature")}
        try:
            with self._engine.begin() as connection:
                connection.execute(insert(_CHECKPOINTS), values)
        except SQLAlchemyError as exc:
            raise UnavailableError(f"checkpoint write failed: {type(exc).__name__}: {exc}") from exc

    def checkpoints(self) -> list[dict[str, Any]]:
        """Every stored checkpoint, oldest first (one per interval: small next to the trail)."""
        query = select(_CHECKPOINTS).order_by(_CHECKPOINTS.c.id)
        with self._engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def by_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The rows of one trace, in chain order."""
        query = select(_TABLE).where(_TABLE.c.trace_id == trace_id).order_by(_TABLE.c.id)
        with self._engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def by_request(self, request_id: str) -> list[dict[str, Any]]:
        """The rows of one request id, in chain order."""
        query = select(_TABLE).where(_TABLE.c.request_id == request_id).order_by(_TABLE.c.id)
        with self._engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def by_id(self, record_id: int) -> dict[str, Any] | None:
        """One row by id."""
        query = select(_TABLE).where(_TABLE.c.id == record_id)
        with self._engine.connect() as connection:
            found = connection.execute(query).mappings().first()
        return dict(found) if found else None

    def last_id(self) -> int:
        """The last row's id, 0 for an empty trail (about the row count; for progress bars)."""
        query = select(_TABLE.c.id).order_by(_TABLE.c.id.desc()).limit(1)
        with self._engine.connect() as connection:
            last = connection.execute(query).scalar()
        return int(last or 0)

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
