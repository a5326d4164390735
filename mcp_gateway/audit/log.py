"""The audit trail: one hash-chained row per decision, committed before the response goes out.

Each row carries the hash of the previous row and its own hash over a canonical encoding (:func:`record_hash`);
the chain's SQL, and why the primary key stops a fork, is store/chain.py's, and reading the trail back is
store/records.py's. Several processes can share one trail.

If a row cannot be written, :meth:`AuditLog.record` raises :class:`UnavailableError` and the call is refused.

Durability (``audit.durability``): ``process`` (SQLite ``synchronous=NORMAL``: a committed row survives the
gateway being killed) or ``power`` (``synchronous=FULL``: it survives power loss, at one fsync per commit).
:meth:`AuditLog.append` is the call path's way in and uses group commit: at ``process`` an idle trail commits
the row inline on the event loop (about 50 µs, no thread hop); when several callers are waiting, or at
``power``, their rows go to one transaction run on a worker thread, so one fsync covers many callers. Every
caller still gets its answer only after its own row is committed, and rows keep one linear chain.

The event loop never waits on the database. The inline commit runs on a connection that does not wait for a lock
(SQLite busy timeout 0): if another process holds the trail's write lock, the attempt fails at once and the row
goes to the worker thread instead, whose connection waits at most ``audit.write_timeout`` for the lock. So a
caller learns within a stated time (``write_timeout`` per attempt, twice that at most in all) that its row could
not be committed, and is refused as ``unavailable``; ``/healthz`` and calls that need no row keep answering
meanwhile. PostgreSQL rows always take the worker thread: every commit there is a network round trip.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, fields
from typing import Any

from mcp_gateway.canonical import canonical_json, canonical_text
from mcp_gateway.errors import UnavailableError
from mcp_gateway.store.chain import ChainWriter
from mcp_gateway.store.engine import Durability
from mcp_gateway.store.probe import probe_write
from mcp_gateway.store.records import AuditRecords, open_trail
from mcp_gateway.store.search import AuditSearch, Page, SearchFilter
from mcp_gateway.store.tables import AUDIT_COLUMNS

__all__ = [
    "GENESIS",
    "AuditEntry",
    "AuditLog",
    "Durability",
    "new_request_id",
    "record_hash",
    "row_of",
]

GENESIS = "0" * 64
# Seconds a commit may wait for the trail's write lock (audit.write_timeout).
DEFAULT_WRITE_TIMEOUT = 2.0
_HASHED = tuple(name for name in AUDIT_COLUMNS if name not in ("id", "hash"))


def new_request_id() -> str:
    """A fresh request id: the 32 hex digits of a random UUID."""
    return uuid.uuid4().hex


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


def row_of(entry: AuditEntry) -> dict[str, Any]:
    """The row an entry becomes, before the chain columns (``id``, ``ts``, ``prev_hash``, ``hash``) are added.

    Lists and dicts are stored as canonical JSON, so the hash recomputes from the stored text.

    Raises:
        UnavailableError: the entry holds something canonical JSON refuses (NaN, a lone surrogate, a set): the
            row cannot be written, so the caller must refuse, as for any audit write that fails.
    """
    row = {name: getattr(entry, name) for name in _ENTRY_FIELDS}
    try:
        row["roles"] = _canonical(list(entry.roles)) if entry.roles is not None else None
        row["detail"] = _canonical(entry.detail) if entry.detail is not None else None
    except (TypeError, ValueError) as exc:
        raise UnavailableError(f"audit row is not canonical JSON: {exc}") from exc
    if entry.latency_ms is not None:
        # Always a float: the database hands back a float, and the hash must recompute from stored values.
        row["latency_ms"] = round(float(entry.latency_ms), 3)
    return row


# Rows use the one canonical form (canonical.py): the same bytes json.dumps gave with sort_keys, compact
# separators and ensure_ascii=False, which every existing record hash was computed over.
_canonical: Callable[[Any], str] = canonical_text


def record_hash(row: dict[str, Any]) -> str:
    """The hash of one row: sha256 over the canonical JSON of every column but ``id`` and ``hash``.

    Raises:
        UnavailableError: a column holds what canonical JSON refuses (a lone surrogate): no row can carry it.
    """
    try:
        return hashlib.sha256(canonical_json({name: row.get(name) for name in _HASHED})).hexdigest()
    except (TypeError, ValueError) as exc:
        raise UnavailableError(f"audit row is not canonical JSON: {exc}") from exc


class AuditLog:
    """Appends rows to the trail; :attr:`records` reads them back (the methods below delegate to it)."""

    def __init__(
        self,
        database_url: str,
        *,
        durability: Durability = "process",
        max_batch: int = 256,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        """Open (and create if needed) the trail.

        Raises:
            UnavailableError: the database cannot be reached or the table cannot be created.
        """
        self.durability: Durability = durability
        self.write_timeout = write_timeout
        self._max_batch = max_batch
        self._engine = open_trail(database_url, durability)
        self.records = AuditRecords(self._engine)
        self._chain = ChainWriter(self._engine, hasher=record_hash, genesis=GENESIS, lock_timeout=write_timeout)
        # The writer on the event loop: it never waits for a lock (see the module docstring).
        inline = durability == "process" and self._engine.dialect.name == "sqlite"
        self._inline = (
            ChainWriter(self._engine, hasher=record_hash, genesis=GENESIS, lock_timeout=0) if inline else None
        )
        self._lock = threading.Lock()  # serialises the chain writer
        # Group commit: rows waiting for the next transaction, and whether a worker is draining them.
        self._pending: list[_Waiter] = []
        self._wakeup = threading.Condition()
        self._committer: threading.Thread | None = None
        self._closing = False
        # Told of each committed transaction: seconds and rows (metrics.GatewayMetrics.audit_committed).
        self.on_commit: Callable[[float, int], None] | None = None

    @property
    def queue_depth(self) -> int:
        """Rows waiting for the next group-commit transaction."""
        return len(self._pending)

    def close(self) -> None:
        with self._wakeup:
            self._closing = True
            self._wakeup.notify_all()
        if self._committer is not None:
            self._committer.join(timeout=30)
        with self._lock:
            self._chain.close()
            if self._inline is not None:
                self._inline.close()
        self._engine.dispose()

    def record(self, entry: AuditEntry) -> str:
        """Append one row and commit it, blocking; returns the row's hash. For start-up, reloads and the CLI.

        Raises:
            UnavailableError: the row could not be committed. The caller must refuse the call.
        """
        return self.record_at(entry)[1]

    def record_at(self, entry: AuditEntry) -> tuple[int, str]:
        """:meth:`record`, returning the row's id (its place in the chain) with its hash, for rows that name it.

        Raises:
            UnavailableError: the row could not be committed. The caller must refuse the call.
        """
        row = row_of(entry)
        self._commit_rows([row])
        return int(row["id"]), str(row["hash"])

    async def append(self, entry: AuditEntry) -> str:
        """Append one row; returns its hash once the row is committed (group commit, see the module docstring).

        Raises:
            UnavailableError: the row could not be committed. The caller must refuse the call.
        """
        row = row_of(entry)
        inline = self._inline
        if inline is not None and not self._pending and self._lock.acquire(blocking=False):
            # Fast path: nobody is waiting, so commit now on the loop rather than paying a thread hop. It cannot
            # wait for a lock; if it fails (another process is writing, or the database refuses), nothing was
            # committed and the worker thread tries once more, within its bound.
            try:
                started = time.perf_counter()
                inline.append([row])
                self._committed(started, 1)
                return str(row["hash"])
            except UnavailableError:
                pass
            finally:
                self._lock.release()
        return await self._append_later(row)

    async def _append_later(self, row: dict[str, Any]) -> str:
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
        # A backstop: the worker's connection already bounds each attempt by write_timeout, but a caller queued
        # behind a batch that is waiting out its own bound must not wait for several.
        try:
            return await asyncio.wait_for(future, timeout=2 * self.write_timeout + 1)
        except TimeoutError as exc:
            raise UnavailableError(f"audit write not committed within {2 * self.write_timeout + 1:g} s") from exc

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

    def _commit_rows(self, rows: list[dict[str, Any]]) -> None:
        """Link and commit ``rows`` in one transaction, blocking (tests and benchmarks build trails with it).

        Raises:
            UnavailableError: nothing was committed.
        """
        with self._lock:
            started = time.perf_counter()
            self._chain.append(rows)
            self._committed(started, len(rows))

    def _committed(self, started: float, rows: int) -> None:
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started, rows)

    # -- reading, for the CLI and checkpoints (see store/records.py) ------------------------------------------

    def ping(self) -> str | None:
        """None when the trail is reachable, else why not."""
        return self.records.ping()

    def writable(self) -> str | None:
        """None when a write to the trail's database commits within ``write_timeout``, else why not. Blocking: run
        it off the event loop (``/readyz`` does)."""
        return probe_write(self._engine, self.write_timeout)

    def head(self) -> tuple[int, str] | None:
        """The last record's id and hash, or None for an empty trail."""
        return self.records.head()

    def add_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store a signed checkpoint (see checkpoint.py).

        Raises:
            UnavailableError: it could not be stored.
        """
        self.records.add_checkpoint(checkpoint)

    def checkpoints(self) -> list[dict[str, Any]]:
        """Every stored checkpoint, oldest first."""
        return self.records.checkpoints()

    def by_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The rows of one trace, in chain order."""
        return self.records.by_trace(trace_id)

    def by_request(self, request_id: str) -> list[dict[str, Any]]:
        """The rows of one request id, in chain order."""
        return self.records.by_request(request_id)

    def by_id(self, record_id: int) -> dict[str, Any] | None:
        """One row by id."""
        return self.records.by_id(record_id)

    def last_id(self) -> int:
        """The last row's id, 0 for an empty trail (about the row count; for progress bars)."""
        return self.records.last_id()

    def tail(self, count: int) -> list[dict[str, Any]]:
        """The last ``count`` rows, oldest first."""
        return self.records.tail(count)

    def iter_rows(self, since: str | None = None, *, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every row in chain order, streamed in batches (never the whole trail in memory)."""
        return self.records.iter_rows(since, batch=batch)

    def search(self, wanted: SearchFilter, *, before: int | None = None, limit: int = 50) -> Page:
        """One page of rows matching ``wanted``, newest first (keyset pagination; see store/search.py)."""
        return AuditSearch(self._engine).page(wanted, before=before, limit=limit)
