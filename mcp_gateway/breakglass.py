"""Break-glass grants and held calls, with separation of duties, stored beside the audit trail.

A **grant** is a time-bound allow for exactly one subject and one tool in the requester's catalog. It is
requested with the requester's own token, which must carry a second factor in ``amr``
(``breakglass.mfa_methods``), a reason and a TTL no longer than ``breakglass.max_ttl``; it takes effect only once
a *different* subject holding an approver role (``breakglass.approver_roles``), also with a second factor,
approves it. It lapses on its own (``expires_at``) and can be revoked at any time. The gateway consults grants
only when the policy denies a call, and every call under a grant is audited with the grant id as its rule; the
grant changes the policy decision and nothing else (audit, DLP and rate limits still apply).

A **held call** is the same idea for one call: a tool with ``approval: required`` in its catalog refuses each
call with ``approval_required`` and an approval id until a second person approves that exact call. The approval
is bound to the caller, catalog, tool, the SHA-256 of the canonical arguments and the policy version, expires
after ``breakglass.approval_ttl`` and is consumed by the one call it approves: a changed argument needs a new
approval.

Both live in the audit database (their own tables, SQLModel like the trail), so every replica sees them and a
revocation takes effect on the next call. Every state change is written to the audit trail too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, SQLModel

from mcp_gateway.audit.log import AuditEntry, AuditLog
from mcp_gateway.config import BreakGlassSettings
from mcp_gateway.errors import ApprovalRequiredError, BreakGlassError, UnavailableError
from mcp_gateway.identity import Principal
from mcp_gateway.store.engine import create_tables

__all__ = ["BreakGlass", "CallApproval", "Grant", "parse_ttl"]

Status = Literal["pending", "approved", "revoked", "used", "denied"]


class BreakGlassGrant(SQLModel, table=True):
    __tablename__ = "breakglass_grant"

    id: str = Field(primary_key=True)
    subject: str = Field(index=True)
    catalog: str
    tool: str
    reason: str
    ttl: int
    requested_at: float
    requester_amr: str
    status: str
    approver: str | None = None
    approved_at: float | None = None
    expires_at: float | None = None
    revoked_by: str | None = None
    revoked_at: float | None = None


class HeldCall(SQLModel, table=True):
    __tablename__ = "held_call"

    id: str = Field(primary_key=True)
    subject: str = Field(index=True)
    catalog: str
    tool: str
    args_digest: str
    policy_version: str
    requested_at: float
    expires_at: float
    status: str
    approver: str | None = None
    approved_at: float | None = None
    used_at: float | None = None


_GRANTS = BreakGlassGrant.__table__  # type: ignore[attr-defined]
_HELD = HeldCall.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Grant:
    """A break-glass grant as read from the store; ``state`` adds ``expired`` to the stored status."""

    id: str
    subject: str
    catalog: str
    tool: str
    reason: str
    ttl: int
    requested_at: float
    status: str
    approver: str | None
    approved_at: float | None
    expires_at: float | None
    revoked_by: str | None
    state: str


@dataclass(frozen=True, slots=True)
class CallApproval:
    """A held call's approval record."""

    id: str
    subject: str
    catalog: str
    tool: str
    args_digest: str
    policy_version: str
    requested_at: float
    expires_at: float
    status: str
    approver: str | None
    state: str


_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_ttl(text: str) -> int:
    """``"30m"``, ``"1h30m"``, ``"900s"`` or ``"900"`` as seconds.

    Raises:
        BreakGlassError: not a positive duration.
    """
    rest, total, number = text.strip().lower(), 0, ""
    if rest.isdigit():
        total = int(rest)
        rest = ""
    for char in rest:
        if char.isdigit():
            number += char
        elif char in _TTL_UNITS and number:
            total += int(number) * _TTL_UNITS[char]
            number = ""
        else:
            raise BreakGlassError(f"--ttl {text!r} is not a duration like 30m, 1h or 900s")
    if number or total <= 0:
        raise BreakGlassError(f"--ttl {text!r} is not a duration like 30m, 1h or 900s")
    return total


def iso(moment: float | None) -> str:
    """An epoch time as ISO 8601 UTC, or an empty string."""
    return "" if moment is None else datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def _sqlite_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_busy_timeout)
        return engine
    return create_engine(url, pool_pre_ping=True)


class BreakGlass:
    """Grants and held calls in the shared database; every state change is also an audit row."""

    def __init__(
        self,
        database_url: str,
        settings: BreakGlassSettings,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (and create if needed) the tables.

        Raises:
            UnavailableError: the database cannot be reached.
        """
        self.settings = settings
        self._audit = audit
        self._clock = clock
        self._engine = _engine(database_url)
        create_tables(self._engine, [_GRANTS, _HELD], "break-glass store")

    def close(self) -> None:
        self._engine.dispose()

    # -- checks shared by every command -----------------------------------------------------------------------

    def _require_mfa(self, principal: Principal, what: str) -> None:
        if not set(principal.amr) & set(self.settings.mfa_methods):
            raise BreakGlassError(
                f"{what} needs a token proving a second factor (amr with one of {list(self.settings.mfa_methods)})"
            )

    def _require_approver(self, approver: Principal, requester: str) -> None:
        self._require_mfa(approver, "approving")
        if approver.subject == requester:
            raise BreakGlassError("nobody approves their own request: a second person must approve")
        if not set(approver.roles) & set(self.settings.approver_roles):
            raise BreakGlassError(f"approving needs one of the roles {list(self.settings.approver_roles)}")

    def _record(self, event: str, actor: Principal | str, outcome: str, detail: dict[str, Any], **fields: Any) -> None:
        if self._audit is None:
            return
        subject = actor if isinstance(actor, str) else actor.subject
        roles = None if isinstance(actor, str) else actor.roles
        self._audit.record(
            AuditEntry(
                event=event,
                decision="allow" if outcome == "ok" else "deny",
                outcome=outcome,
                request_id=uuid.uuid4().hex,
                subject=subject,
                roles=roles,
                detail=detail,
                **fields,
            )
        )

    def _execute(self, statement: Any) -> Any:
        try:
            with self._engine.begin() as connection:
                return connection.execute(statement)
        except SQLAlchemyError as exc:
            raise UnavailableError(f"break-glass store unavailable: {type(exc).__name__}: {exc}") from exc

    def _rows(self, statement: Any) -> list[dict[str, Any]]:
        try:
            with self._engine.connect() as connection:
                return [dict(row) for row in connection.execute(statement).mappings()]
        except SQLAlchemyError as exc:
            raise UnavailableError(f"break-glass store unavailable: {type(exc).__name__}: {exc}") from exc

    # -- grants ---------------------------------------------------------------------------------------------

    def request(self, requester: Principal, tool: str, reason: str, ttl: int, *, tool_exists: bool) -> Grant:
        """Record a pending grant for the requester's own subject and catalog.

        Raises:
            BreakGlassError: no second factor, no reason, TTL too long, catalog not eligible or unknown tool.
        """
        self._require_mfa(requester, "a break-glass request")
        if requester.catalog not in self.settings.catalogs:
            raise BreakGlassError(f"callers of catalog {requester.catalog!r} cannot request break-glass access")
        if len(reason.strip()) < 10:
            raise BreakGlassError("--reason must say why, in at least 10 characters")
        if not 0 < ttl <= self.settings.max_ttl:
            raise BreakGlassError(f"--ttl must be at most {self.settings.max_ttl} s")
        if not tool_exists:
            raise BreakGlassError(f"{tool!r} is not a tool of catalog {requester.catalog!r}")
        row = {
            "id": uuid.uuid4().hex[:16],
            "subject": requester.subject,
            "catalog": requester.catalog,
            "tool": tool,
            "reason": reason.strip(),
            "ttl": ttl,
            "requested_at": self._clock(),
            "requester_amr": ",".join(requester.amr),
            "status": "pending",
        }
        self._execute(insert(_GRANTS).values(**row))
        self._record(
            "breakglass.request",
            requester,
            "ok",
            {"grant": row["id"], "ttl": ttl, "reason": row["reason"]},
            catalog=requester.catalog,
            tool=tool,
        )
        return self.get(str(row["id"]))

    def get(self, grant_id: str) -> Grant:
        """One grant.

        Raises:
            BreakGlassError: no such grant.
        """
        rows = self._rows(select(_GRANTS).where(_GRANTS.c.id == grant_id))
        if not rows:
            raise BreakGlassError(f"no break-glass grant {grant_id!r}")
        return self._grant(rows[0])

    def grants(self) -> list[Grant]:
        """Every grant, newest first."""
        return [self._grant(row) for row in self._rows(select(_GRANTS).order_by(_GRANTS.c.requested_at.desc()))]

    def _grant(self, row: dict[str, Any]) -> Grant:
        now = self._clock()
        state = row["status"]
        if state == "pending" and now >= row["requested_at"] + self.settings.pending_ttl:
            state = "expired"
        elif state == "approved" and row["expires_at"] is not None and now >= row["expires_at"]:
            state = "expired"
        fields = {name: row[name] for name in Grant.__slots__ if name != "state"}
        return Grant(**fields, state=state)

    def approve(self, approver: Principal, grant_id: str) -> Grant:
        """Approve a pending grant; its clock starts now.

        Raises:
            BreakGlassError: self-approval, no approver role or second factor, or the grant is not pending.
        """
        grant = self.get(grant_id)
        try:
            self._require_approver(approver, grant.subject)
        except BreakGlassError as exc:
            self._record("breakglass.approve", approver, "refused", {"grant": grant_id, "error": str(exc)})
            raise
        if grant.state != "pending":
            raise BreakGlassError(f"grant {grant_id} is {grant.state}, not pending")
        now = self._clock()
        result = self._execute(
            update(_GRANTS)
            .where(_GRANTS.c.id == grant_id, _GRANTS.c.status == "pending")
            .values(status="approved", approver=approver.subject, approved_at=now, expires_at=now + grant.ttl)
        )
        if result.rowcount != 1:
            raise BreakGlassError(f"grant {grant_id} changed while being approved")
        self._record(
            "breakglass.approve",
            approver,
            "ok",
            {"grant": grant_id, "requester": grant.subject, "expires_at": iso(now + grant.ttl)},
            catalog=grant.catalog,
            tool=grant.tool,
        )
        return self.get(grant_id)

    def revoke(self, actor: Principal, grant_id: str) -> Grant:
        """End a grant now. The requester or any approver may revoke.

        Raises:
            BreakGlassError: the actor is neither, or the grant is already over.
        """
        grant = self.get(grant_id)
        if actor.subject != grant.subject and not set(actor.roles) & set(self.settings.approver_roles):
            raise BreakGlassError("only the requester or an approver may revoke a grant")
        if grant.state not in ("pending", "approved"):
            raise BreakGlassError(f"grant {grant_id} is already {grant.state}")
        self._execute(
            update(_GRANTS)
            .where(_GRANTS.c.id == grant_id)
            .values(status="revoked", revoked_by=actor.subject, revoked_at=self._clock())
        )
        self._record("breakglass.revoke", actor, "ok", {"grant": grant_id}, catalog=grant.catalog, tool=grant.tool)
        return self.get(grant_id)

    def active_grant(self, subject: str, catalog: str, tool: str) -> str | None:
        """The id of an approved, unexpired grant for exactly this subject, catalog and tool, if any.

        Raises:
            UnavailableError: the store cannot be read (the call is then refused: fail closed).
        """
        query = (
            select(_GRANTS.c.id)
            .where(
                _GRANTS.c.subject == subject,
                _GRANTS.c.catalog == catalog,
                _GRANTS.c.tool == tool,
                _GRANTS.c.status == "approved",
                _GRANTS.c.expires_at > self._clock(),
            )
            .order_by(_GRANTS.c.expires_at.desc())
            .limit(1)
        )
        rows = self._rows(query)
        return str(rows[0]["id"]) if rows else None

    def granted_tools(self, subject: str, catalog: str) -> frozenset[str]:
        """Tools this subject holds an active grant for in ``catalog`` (for ``tools/list``)."""
        query = select(_GRANTS.c.tool).where(
            _GRANTS.c.subject == subject,
            _GRANTS.c.catalog == catalog,
            _GRANTS.c.status == "approved",
            _GRANTS.c.expires_at > self._clock(),
        )
        return frozenset(str(row["tool"]) for row in self._rows(query))

    # -- held calls -----------------------------------------------------------------------------------------

    def claim_call(self, principal: Principal, tool: str, args_digest: str, policy_version: str) -> str:
        """Consume an approval for exactly this call, or open (or reuse) a pending one.

        Returns:
            The id of the approval the call was admitted under.

        Raises:
            ApprovalRequiredError: no approved, unused, unexpired approval matches; carries the pending id.
            UnavailableError: the store cannot be read or written.
        """
        now = self._clock()
        binding = (
            _HELD.c.subject == principal.subject,
            _HELD.c.catalog == principal.catalog,
            _HELD.c.tool == tool,
            _HELD.c.args_digest == args_digest,
            _HELD.c.policy_version == policy_version,
            _HELD.c.expires_at > now,
        )
        for row in self._rows(select(_HELD.c.id, _HELD.c.status).where(*binding, _HELD.c.status == "approved")):
            claimed = self._execute(
                update(_HELD)
                .where(_HELD.c.id == row["id"], _HELD.c.status == "approved")
                .values(status="used", used_at=now)
            )
            if claimed.rowcount == 1:  # another replica may have consumed it first
                return str(row["id"])
        pending = self._rows(select(_HELD.c.id).where(*binding, _HELD.c.status == "pending").limit(1))
        if pending:
            approval_id = str(pending[0]["id"])
        else:
            approval_id = uuid.uuid4().hex[:16]
            self._execute(
                insert(_HELD).values(
                    id=approval_id,
                    subject=principal.subject,
                    catalog=principal.catalog,
                    tool=tool,
                    args_digest=args_digest,
                    policy_version=policy_version,
                    requested_at=now,
                    expires_at=now + self.settings.approval_ttl,
                    status="pending",
                )
            )
        raise ApprovalRequiredError(f"{tool} needs approval {approval_id}", approval_id=approval_id)

    def calls(self) -> list[CallApproval]:
        """Every held call, newest first."""
        now = self._clock()
        out = []
        for row in self._rows(select(_HELD).order_by(_HELD.c.requested_at.desc())):
            state = (
                "expired" if row["status"] in ("pending", "approved") and now >= row["expires_at"] else row["status"]
            )
            fields = {name: row[name] for name in CallApproval.__slots__ if name != "state"}
            out.append(CallApproval(**fields, state=state))
        return out

    def decide_call(self, approver: Principal, approval_id: str, approve: bool) -> CallApproval:
        """Approve (or deny) one held call. The approval is good for that exact call until it expires.

        Raises:
            BreakGlassError: self-approval, no approver role or second factor, or the call is not pending.
        """
        found = [call for call in self.calls() if call.id == approval_id]
        if not found:
            raise BreakGlassError(f"no held call {approval_id!r}")
        call = found[0]
        self._require_approver(approver, call.subject)
        if call.state != "pending":
            raise BreakGlassError(f"held call {approval_id} is {call.state}, not pending")
        status = "approved" if approve else "denied"
        self._execute(
            update(_HELD)
            .where(_HELD.c.id == approval_id, _HELD.c.status == "pending")
            .values(status=status, approver=approver.subject, approved_at=self._clock())
        )
        self._record(
            "approval.approve" if approve else "approval.deny",
            approver,
            "ok",
            {"approval": approval_id, "requester": call.subject, "args_digest": call.args_digest},
            catalog=call.catalog,
            tool=call.tool,
        )
        return next(item for item in self.calls() if item.id == approval_id)
