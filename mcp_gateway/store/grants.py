"""The SQL of break-glass grants and held calls: one engine for both, in the audit database.

Each change is one statement, and the ones that decide something (approve a pending grant, consume an approved
call) carry the state they expect in their WHERE clause (status and the chain record the row names), so two
replicas acting at once cannot both succeed. What a row means, and whether it is honoured, is decided against the
hash chain (grantchain.py); this module also reads the chain's records of grants for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

from sqlalchemy import Executable, Table, bindparam, func, insert, inspect, or_, select, text, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import SQLAlchemyError

from mcp_gateway.store.engine import create_tables, open_engine, unavailable
from mcp_gateway.store.tables import GRANT_TABLE as _GRANTS
from mcp_gateway.store.tables import HELD_CALL_TABLE as _HELD
from mcp_gateway.store.tables import RECORD_TABLE as _RECORDS

__all__ = ["BreakGlassStore"]

_WHAT = "break-glass store"
_TABLES = {"grant": _GRANTS, "call": _HELD}


class BreakGlassStore:
    """Grants and held calls as rows (dicts of stored values); their meaning is breakglass.py's and approvals.py's.

    Every method raises :class:`~mcp_gateway.errors.UnavailableError` when the database cannot be read or written.
    """

    def __init__(self, database_url: str) -> None:
        """Open (and create if needed) the tables; add the columns later versions introduced.

        Raises:
            UnavailableError: the database cannot be reached.
        """
        self._engine = open_engine(database_url)
        create_tables(self._engine, [_GRANTS, _HELD], _WHAT)
        self._add_missing_columns()
        # The chain reader runs on every refused call: one driver connection and SQL compiled once (as
        # store/chain.py does), since SQLAlchemy building and executing the statement cost several times the query.
        self._reader_lock = threading.Lock()
        self._reader: Any = None
        self._reader_sql: tuple[tuple[str, ...], str, Callable[[int], Any]] | None = None
        self._driver_error: type[Exception] = self._engine.dialect.loaded_dbapi.Error

    def _missing_columns(self) -> list[tuple[str, str, str]]:
        with self._engine.connect() as connection:
            inspector = inspect(connection)
            return [
                (table.name, column.name, column.type.compile(dialect=self._engine.dialect))
                for table in (_GRANTS, _HELD)
                for column in table.columns
                if column.name not in {found["name"] for found in inspector.get_columns(table.name)}
            ]

    def _add_missing_columns(self) -> None:
        """Tables created before the chain binding lack its columns; their old rows stay unhonoured (no record).

        Another process upgrading the same database at the same moment may add a column first: that is success.
        """
        try:
            for table, column, kind in self._missing_columns():
                try:
                    with self._engine.begin() as connection:
                        connection.execute(text(f'ALTER TABLE {table} ADD COLUMN "{column}" {kind}'))
                except SQLAlchemyError:
                    if (table, column, kind) in self._missing_columns():
                        raise
        except SQLAlchemyError as exc:
            raise unavailable(_WHAT, exc) from exc

    def close(self) -> None:
        with self._reader_lock:
            self._drop_reader()
        self._engine.dispose()

    def _execute(self, statement: Executable) -> CursorResult[Any]:
        try:
            with self._engine.begin() as connection:
                return connection.execute(statement)
        except SQLAlchemyError as exc:
            raise unavailable(_WHAT, exc) from exc

    def _rows(self, statement: Executable) -> list[dict[str, Any]]:
        try:
            with self._engine.connect() as connection:
                return [dict(row) for row in connection.execute(statement).mappings()]
        except SQLAlchemyError as exc:
            raise unavailable(_WHAT, exc) from exc

    # -- rows of either kind ("grant" or "call") ---------------------------------------------------------------

    def add(self, kind: str, row: dict[str, Any]) -> None:
        self._execute(insert(_TABLES[kind]).values(**row))

    def row(self, kind: str, row_id: str) -> dict[str, Any] | None:
        table = _TABLES[kind]
        rows = self._rows(select(table).where(table.c.id == row_id))
        return rows[0] if rows else None

    def rows_by_id(self, kind: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        table = _TABLES[kind]
        return self._rows(select(table).where(table.c.id.in_(list(ids)))) if ids else []

    def all(self, kind: str) -> list[dict[str, Any]]:
        """Every row, newest first."""
        table = _TABLES[kind]
        return self._rows(select(table).order_by(table.c.requested_at.desc()))

    def transition(self, kind: str, row_id: str, expect: dict[str, Any], values: dict[str, Any]) -> bool:
        """Set ``values`` on the row if it still holds ``expect`` (column -> value); False if it does not (another
        approver or replica was first, or the row is not the one the chain names)."""
        table: Table = _TABLES[kind]
        conditions = [table.c.id == row_id, *(table.c[name] == value for name, value in expect.items())]
        return self._execute(update(table).where(*conditions).values(**values)).rowcount == 1

    def set_chain(self, kind: str, row_id: str, seq: int, digest: str) -> None:
        """Name the chain record of the row's latest change."""
        table = _TABLES[kind]
        self._execute(update(table).where(table.c.id == row_id).values(chain_seq=seq, chain_digest=digest))

    # -- the chain's records of grants and held calls ------------------------------------------------------------

    def chain_records(self, after: int, events: Sequence[str]) -> list[dict[str, Any]]:
        """The trail's records after id ``after`` whose event is one of ``events``, and its head record, in order.

        One statement: the head moves the reader's position past records that are not about grants.
        """
        with self._reader_lock:
            try:
                sql, parameters = self._compiled(tuple(events))
                if self._reader is None:
                    self._reader = self._engine.raw_connection()
                cursor = self._reader.cursor()
                try:
                    cursor.execute(sql, parameters(after))
                    names = [column[0] for column in cursor.description]
                    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
                finally:
                    cursor.close()
                self._reader.rollback()  # end the read: the next one sees every commit since (PostgreSQL)
                return rows
            except (SQLAlchemyError, self._driver_error) as exc:
                self._drop_reader()
                raise unavailable(_WHAT, exc) from exc

    def _compiled(self, events: tuple[str, ...]) -> tuple[str, Callable[[int], Any]]:
        if self._reader_sql is None or self._reader_sql[0] != events:
            head = select(func.max(_RECORDS.c.id)).scalar_subquery()
            statement = (
                select(_RECORDS)
                .where(
                    _RECORDS.c.id > bindparam("after", 0),
                    or_(_RECORDS.c.event.in_(list(events)), _RECORDS.c.id == head),
                )
                .order_by(_RECORDS.c.id)
            )
            compiled = statement.compile(dialect=self._engine.dialect, compile_kwargs={"render_postcompile": True})
            base, order = compiled.construct_params(), compiled.positiontup

            def parameters(after: int) -> Any:
                values = {**base, "after": after}
                return tuple(values[name] for name in order) if order else values

            self._reader_sql = (events, compiled.string, parameters)
        return self._reader_sql[1], self._reader_sql[2]

    def _drop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            with suppress(Exception):
                reader.invalidate()
