"""Break-glass grants, with separation of duties, stored beside the audit trail.

A **grant** is a time-bound allow for exactly one subject and one tool in the requester's catalog. It is
requested with the requester's own token, which must carry a second factor in ``amr``
(``breakglass.mfa_methods``), a reason and a TTL no longer than ``breakglass.max_ttl``; it takes effect only once
a *different* subject holding an approver role (``breakglass.approver_roles``), also with a second factor,
approves it. It lapses on its own (``expires_at``) and can be revoked at any time. The gateway consults grants
only when the policy denies a call, and every call under a grant is audited with the grant id as its rule; the
grant changes the policy decision and nothing else (audit, DLP and rate limits still apply).

Held calls, the same idea for one call, are approvals.py's; :class:`BreakGlass` opens them on the same store
(:attr:`BreakGlass.approvals`). Both live in the audit database (store/grants.py), so every replica sees them and
a revocation takes effect on the next call. Every state change is written to the audit trail too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mcp_gateway.approvals import Approvals, CallApproval, DutyChecker
from mcp_gateway.audit.log import AuditLog
from mcp_gateway.config import BreakGlassSettings
from mcp_gateway.errors import BreakGlassError
from mcp_gateway.identity import Principal
from mcp_gateway.store.grants import BreakGlassStore

__all__ = ["BreakGlass", "Grant", "iso", "parse_ttl"]


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


class BreakGlass:
    """Grants in the shared database; every state change is also an audit row. Holds the held calls too."""

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
        self._clock = clock
        self._store = BreakGlassStore(database_url)
        self._duties = DutyChecker(settings, audit)
        self.approvals = Approvals(self._store, self._duties, clock)

    def close(self) -> None:
        self._store.close()

    # -- held calls, until their callers use `approvals` ---------------------------------------------------------

    def claim_call(self, principal: Principal, tool: str, args_digest: str, policy_version: str) -> str:
        """:meth:`Approvals.claim_call <mcp_gateway.approvals.Approvals.claim_call>`."""
        return self.approvals.claim_call(principal, tool, args_digest, policy_version)

    def calls(self) -> list[CallApproval]:
        """:meth:`Approvals.calls <mcp_gateway.approvals.Approvals.calls>`."""
        return self.approvals.calls()

    def decide_call(self, approver: Principal, approval_id: str, approve: bool) -> CallApproval:
        """:meth:`Approvals.decide_call <mcp_gateway.approvals.Approvals.decide_call>`."""
        return self.approvals.decide_call(approver, approval_id, approve)

    # -- grants ---------------------------------------------------------------------------------------------

    def request(self, requester: Principal, tool: str, reason: str, ttl: int, *, tool_exists: bool) -> Grant:
        """Record a pending grant for the requester's own subject and catalog.

        Raises:
            BreakGlassError: no second factor, no reason, TTL too long, catalog not eligible or unknown tool.
        """
        self._duties.require_mfa(requester, "a break-glass request")
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
        self._store.add_grant(row)
        self._duties.record(
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
        row = self._store.grant(grant_id)
        if row is None:
            raise BreakGlassError(f"no break-glass grant {grant_id!r}")
        return self._grant(row)

    def grants(self) -> list[Grant]:
        """Every grant, newest first."""
        return [self._grant(row) for row in self._store.grants()]

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
            self._duties.require_approver(approver, grant.subject)
        except BreakGlassError as exc:
            self._duties.record("breakglass.approve", approver, "refused", {"grant": grant_id, "error": str(exc)})
            raise
        if grant.state != "pending":
            raise BreakGlassError(f"grant {grant_id} is {grant.state}, not pending")
        now = self._clock()
        if not self._store.approve_grant(grant_id, approver.subject, now, now + grant.ttl):
            raise BreakGlassError(f"grant {grant_id} changed while being approved")
        self._duties.record(
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
        self._store.revoke_grant(grant_id, actor.subject, self._clock())
        self._duties.record(
            "breakglass.revoke", actor, "ok", {"grant": grant_id}, catalog=grant.catalog, tool=grant.tool
        )
        return self.get(grant_id)

    def active_grant(self, subject: str, catalog: str, tool: str) -> str | None:
        """The id of an approved, unexpired grant for exactly this subject, catalog and tool, if any.

        Raises:
            UnavailableError: the store cannot be read (the call is then refused: fail closed).
        """
        return self._store.active_grant(subject, catalog, tool, self._clock())

    def granted_tools(self, subject: str, catalog: str) -> frozenset[str]:
        """Tools this subject holds an active grant for in ``catalog`` (for ``tools/list``).

        Raises:
            UnavailableError: the store cannot be read.
        """
        return self._store.granted_tools(subject, catalog, self._clock())
