"""Reading the audit trail back (the CLI, verification, export, checkpoints), and storing signed checkpoints.

None of this is on the call path, so it goes through SQLAlchemy Core and short-lived connections; rows come back
as plain dicts with the stored values, which is what verification re-hashes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import Select

from mcp_gateway.errors import UnavailableError
from mcp_gateway.store.engine import Durability, create_tables, open_engine
from mcp_gateway.store.tables import CHECKPOINT_TABLE as _CHECKPOINTS
from mcp_gateway.store.tables import PROBE_TABLE
from mcp_gateway.store.tables import RECORD_TABLE as _RECORDS

__all__ = ["AuditRecords", "open_trail", "trail_identity"]

_CHECKPOINT_FIELDS = tuple(column.name for column in _CHECKPOINTS.columns if column.name != "id")
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


def trail_identity(url: URL) -> str:
    """Which database a trail is, stably, with no secret in it: ``sqlite:`` and the file's resolved absolute path,
    or ``backend://host:port/database`` (host lowercased, the default port spelt out, user, password, driver and
    options left out), so two spellings of one database are one trail and two databases never are."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or url.query.get("mode") == "memory":
            return "sqlite::memory:"
        return "sqlite:" + str(Path(database.removeprefix("file:")).resolve())
    port = url.port or _DEFAULT_PORTS.get(backend, 0)
    return f"{backend}://{(url.host or '').lower()}:{port}/{url.database or ''}"


def open_trail(database_url: str, durability: Durability) -> Engine:
    """The trail's engine, its tables created if missing.

    Raises:
        UnavailableError: the database cannot be reached or the tables cannot be created.
    """
    engine = open_engine(database_url, durability)
    create_tables(engine, [_RECORDS, _CHECKPOINTS, PROBE_TABLE], "audit database")
    return engine


class AuditRecords:
    """The trail's rows and checkpoints, read through ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._ping = select(1)
        self.identity = trail_identity(engine.url)  # names the trail's checkpoint mirror (audit/mirror.py)

    def _rows(self, query: Select[Any]) -> list[dict[str, Any]]:
        with self._engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

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
        query = select(_RECORDS.c.id, _RECORDS.c.hash).order_by(_RECORDS.c.id.desc()).limit(1)
        with self._engine.connect() as connection:
            found = connection.execute(query).first()
        return (int(found[0]), str(found[1])) if found else None

    def last_id(self) -> int:
        """The last row's id, 0 for an empty trail (about the row count; for progress bars)."""
        query = select(_RECORDS.c.id).order_by(_RECORDS.c.id.desc()).limit(1)
        with self._engine.connect() as connection:
            last = connection.execute(query).scalar()
        return int(last or 0)

    def by_id(self, record_id: int) -> dict[str, Any] | None:
        """One row by id."""
        rows = self._rows(select(_RECORDS).where(_RECORDS.c.id == record_id))
        return rows[0] if rows else None

    def by_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The rows of one trace, in chain order."""
        return self._rows(select(_RECORDS).where(_RECORDS.c.trace_id == trace_id).order_by(_RECORDS.c.id))

    def by_request(self, request_id: str) -> list[dict[str, Any]]:
        """The rows of one request id, in chain order."""
        return self._rows(select(_RECORDS).where(_RECORDS.c.request_id == request_id).order_by(_RECORDS.c.id))

    def hashes_at(self, record_ids: Iterable[int]) -> dict[int, str]:
        """The stored hash of each of ``record_ids`` that exists, read in chunks.

        Raises:
            UnavailableError: the trail cannot be read.
        """
        wanted = sorted(set(record_ids))
        found: dict[int, str] = {}
        try:
            with self._engine.connect() as connection:
                for start in range(0, len(wanted), 500):
                    chunk = wanted[start : start + 500]
                    query = select(_RECORDS.c.id, _RECORDS.c.hash).where(_RECORDS.c.id.in_(chunk))
                    found.update((int(row[0]), str(row[1])) for row in connection.execute(query))
        except SQLAlchemyError as exc:
            raise UnavailableError(f"audit database unavailable: {type(exc).__name__}") from exc
        return found

    def tail(self, count: int) -> list[dict[str, Any]]:
        """The last ``count`` rows, oldest first."""
        return self._rows(select(_RECORDS).order_by(_RECORDS.c.id.desc()).limit(count))[::-1]

    def iter_rows(self, since: str | None = None, *, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every row in chain order, streamed in batches (never the whole trail in memory)."""
        last_id = 0
        while True:
            query = select(_RECORDS).where(_RECORDS.c.id > last_id).order_by(_RECORDS.c.id).limit(batch)
            if since is not None:
                query = query.where(_RECORDS.c.ts >= since)
            rows = self._rows(query)
            if not rows:
                return
            yield from rows
            last_id = rows[-1]["id"]

    def checkpoints(self) -> list[dict[str, Any]]:
        """Every stored checkpoint, oldest first (one per interval: small next to the trail)."""
        return self._rows(select(_CHECKPOINTS).order_by(_CHECKPOINTS.c.id))

    def add_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store a signed checkpoint (see audit/checkpoint.py).

        Raises:
            UnavailableError: it could not be stored.
        """
        values = {key: checkpoint[key] for key in _CHECKPOINT_FIELDS}
        try:
            with self._engine.begin() as connection:
                connection.execute(insert(_CHECKPOINTS), values)
        except SQLAlchemyError as exc:
            raise UnavailableError(f"checkpoint write failed: {type(exc).__name__}: {exc}") from exc
