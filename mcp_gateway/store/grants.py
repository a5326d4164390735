"""The SQL of break-glass grants and held calls: one engine for both, in the audit database.

Each change is one statement, and the ones that decide something (approve a pending grant, consume an approved
call) carry the state they expect in their WHERE clause, so two replicas acting at once cannot both succeed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Executable, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import SQLAlchemyError

from mcp_gateway.store.engine import create_tables, open_engine, unavailable
from mcp_gateway.store.tables import GRANT_TABLE as _GRANTS
from mcp_gateway.store.tables import HELD_CALL_TABLE as _HELD

__all__ = ["BreakGlassStore"]

_WHAT = "break-glass store"


class BreakGlassStore:
    """Grants and held calls as rows (dicts of stored values); their meaning is breakglass.py's and approvals.py's.

    Every method raises :class:`~mcp_gateway.errors.UnavailableError` when the database cannot be read or written.
    """

    def __init__(self, database_url: str) -> None:
        """Open (and create if needed) the tables.

        Raises:
            UnavailableError: the database cannot be reached.
        """
        self._engine = open_engine(database_url)
        create_tables(self._engine, [_GRANTS, _HELD], _WHAT)

    def close(self) -> None:
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

    # -- grants ---------------------------------------------------------------------------------------------

    def add_grant(self, row: dict[str, Any]) -> None:
        self._execute(insert(_GRANTS).values(**row))

    def grant(self, grant_id: str) -> dict[str, Any] | None:
        rows = self._rows(select(_GRANTS).where(_GRANTS.c.id == grant_id))
        return rows[0] if rows else None

    def grants(self) -> list[dict[str, Any]]:
        """Every grant, newest first."""
        return self._rows(select(_GRANTS).order_by(_GRANTS.c.requested_at.desc()))

    def approve_grant(self, grant_id: str, approver: str, now: float, expires_at: float) -> bool:
        """Approve the grant if it is still pending; False if it is not (another approver was first)."""
        result = self._execute(
            update(_GRANTS)
            .where(_GRANTS.c.id == grant_id, _GRANTS.c.status == "pending")
            .values(status="approved", approver=approver, approved_at=now, expires_at=expires_at)
        )
        return result.rowcount == 1

    def revoke_grant(self, grant_id: str, revoked_by: str, now: float) -> None:
        self._execute(
            update(_GRANTS)
            .where(_GRANTS.c.id == grant_id)
            .values(status="revoked", revoked_by=revoked_by, revoked_at=now)
        )

    def _active(self, subject: str, catalog: str, now: float) -> tuple[ColumnElement[bool], ...]:
        return (
            _GRANTS.c.subject == subject,
            _GRANTS.c.catalog == catalog,
            _GRANTS.c.status == "approved",
            _GRANTS.c.expires_at > now,
        )

    def active_grant(self, subject: str, catalog: str, tool: str, now: float) -> str | None:
        """The id of the approved grant for exactly this subject, catalog and tool that lasts longest, if any."""
        query = (
            select(_GRANTS.c.id)
            .where(*self._active(subject, catalog, now), _GRANTS.c.tool == tool)
            .order_by(_GRANTS.c.expires_at.desc())
            .limit(1)
        )
        rows = self._rows(query)
        return str(rows[0]["id"]) if rows else None

    def granted_tools(self, subject: str, catalog: str, now: float) -> frozenset[str]:
        """The tools this subject holds an approved, unexpired grant for in ``catalog``."""
        rows = self._rows(select(_GRANTS.c.tool).where(*self._active(subject, catalog, now)))
        return frozenset(str(row["tool"]) for row in rows)

    # -- held calls -----------------------------------------------------------------------------------------

    @staticmethod
    def _binding(binding: dict[str, str], now: float) -> tuple[ColumnElement[bool], ...]:
        return (*(_HELD.c[name] == value for name, value in binding.items()), _HELD.c.expires_at > now)

    def consume_call(self, binding: dict[str, str], now: float) -> str | None:
        """Mark one approved, unexpired call matching ``binding`` (column -> value) used; returns its id, if any.

        Another replica may consume the same approval at the same moment: only one update finds it approved.
        """
        query = select(_HELD.c.id).where(*self._binding(binding, now), _HELD.c.status == "approved")
        for row in self._rows(query):
            claimed = self._execute(
                update(_HELD)
                .where(_HELD.c.id == row["id"], _HELD.c.status == "approved")
                .values(status="used", used_at=now)
            )
            if claimed.rowcount == 1:
                return str(row["id"])
        return None

    def pending_call(self, binding: dict[str, str], now: float) -> str | None:
        """The id of a pending, unexpired call matching ``binding``, if any."""
        query = select(_HELD.c.id).where(*self._binding(binding, now), _HELD.c.status == "pending").limit(1)
        rows = self._rows(query)
        return str(rows[0]["id"]) if rows else None

    def add_call(self, row: dict[str, Any]) -> None:
        self._execute(insert(_HELD).values(**row))

    def calls(self) -> list[dict[str, Any]]:
        """Every held call, newest first."""
        return self._rows(select(_HELD).order_by(_HELD.c.requested_at.desc()))

    def decide_call(self, approval_id: str, status: str, approver: str, now: float) -> None:
        """Set a pending call's status (``approved`` or ``denied``) and who decided."""
        self._execute(
            update(_HELD)
            .where(_HELD.c.id == approval_id, _HELD.c.status == "pending")
            .values(status=status, approver=approver, approved_at=now)
        )
