"""Break-glass grants, with separation of duties, stored beside the audit trail and bound to its hash chain.

A **grant** is a time-bound allow for exactly one subject and one tool in the requester's catalog. It is
requested with the requester's own token, which must carry a second factor in ``amr``
(``breakglass.mfa_methods``), a reason and a TTL no longer than ``breakglass.max_ttl``; it takes effect only once
a *different* subject holding an approver role (``breakglass.approver_roles``), also with a second factor,
approves it. It lapses on its own (``expires_at``) and can be revoked at any time. The gateway consults grants
only when the policy denies a call, and every call under a grant is audited with the grant id as its rule; the
grant changes the policy decision and nothing else (audit, DLP and rate limits still apply). Using a grant needs a
second factor in the calling token too (``breakglass.use_requires_mfa``, on by default).

Every change (request, approval, revocation) is a hash-chain record and the row names it: a grant is honoured only
when its row matches its latest chain record (grantchain.py), so a row inserted or edited by SQL does nothing.
After a grant ends, someone other than its requester and approver signs it off (:meth:`BreakGlass.review`, a
chain record too) within ``breakglass.review_within``; :meth:`BreakGlass.overdue` lists the late ones.

Held calls, the same idea for one call, are approvals.py's; :class:`BreakGlass` opens them on the same store
(:attr:`BreakGlass.approvals`). Both live in the audit database (store/grants.py), so every replica sees them and
a revocation takes effect on the next call.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mcp_gateway.approvals import Actor, Approvals, CallApproval, DutyChecker, as_operator
from mcp_gateway.audit.log import AuditLog
from mcp_gateway.config import BreakGlassSettings
from mcp_gateway.errors import BreakGlassError
from mcp_gateway.grantchain import mismatch
from mcp_gateway.identity import Principal
from mcp_gateway.store.grants import BreakGlassStore

__all__ = ["OUTCOMES", "BreakGlass", "Grant", "iso", "parse_ttl"]

OUTCOMES = ("ok", "misuse")


@dataclass(frozen=True, slots=True)
class Grant:
    """A break-glass grant as read from the store; ``state`` adds ``expired`` and ``unrecorded`` (a row that does
    not match its chain record: never honoured) to the stored status. ``reviews`` are its sign-offs, from the
    chain; ``review_due`` is when its review is due (None while it has not ended, or was never approved)."""

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
    problem: str | None
    reviews: tuple[Mapping[str, Any], ...]
    review_due: float | None


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
    """Grants in the shared database, each change a chain record. Holds the held calls too."""

    def __init__(
        self,
        database_url: str,
        settings: BreakGlassSettings,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (and create if needed) the tables. Without ``audit`` nothing can change (nothing can be recorded).

        Raises:
            UnavailableError: the database cannot be reached.
        """
        self.settings = settings
        self._clock = clock
        self._store = BreakGlassStore(database_url)
        self._duties = DutyChecker(settings, audit, self._store)
        self.approvals = Approvals(self._duties, clock)

    def close(self) -> None:
        self._store.close()

    # -- held calls, until their callers use `approvals` ---------------------------------------------------------

    def claim_call(
        self,
        principal: Principal,
        tool: str,
        args_digest: str,
        policy_version: str,
        arguments: Mapping[str, Any] | None = None,
    ) -> str:
        """:meth:`Approvals.claim_call <mcp_gateway.approvals.Approvals.claim_call>`."""
        return self.approvals.claim_call(principal, tool, args_digest, policy_version, arguments)

    def calls(self) -> list[CallApproval]:
        """:meth:`Approvals.calls <mcp_gateway.approvals.Approvals.calls>`."""
        return self.approvals.calls()

    def decide_call(self, approver: Actor, approval_id: str, approve: bool) -> CallApproval:
        """:meth:`Approvals.decide_call <mcp_gateway.approvals.Approvals.decide_call>`."""
        return self.approvals.decide_call(approver, approval_id, approve)

    # -- grants ---------------------------------------------------------------------------------------------

    def request(self, requester: Principal, tool: str, reason: str, ttl: int, *, tool_exists: bool) -> Grant:
        """Record a pending grant for the requester's own subject and catalog.

        Raises:
            BreakGlassError: no second factor, no reason, TTL too long, catalog not eligible or unknown tool.
            UnavailableError: the request could not be recorded.
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
        detail = {"grant": row["id"], "ttl": ttl, "reason": row["reason"]}
        self._duties.create("grant", row, "breakglass.request", requester, detail)
        return self.get(str(row["id"]))

    def get(self, grant_id: str) -> Grant:
        """One grant.

        Raises:
            BreakGlassError: no such grant.
        """
        row, _entry, why = self._duties.matching("grant", grant_id)
        if row is None:
            raise BreakGlassError(f"no break-glass grant {grant_id!r}")
        return self._grant(row, why)

    def grants(self) -> list[Grant]:
        """Every grant, newest first; one whose row does not match the chain is ``unrecorded``."""
        ledger = self._duties.ledger.refresh()
        return [
            self._grant(row, mismatch(row, ledger.grants.get(row["id"]), "grant")) for row in self._store.all("grant")
        ]

    def overdue(self) -> list[Grant]:
        """Grants that ended (expired or revoked after approval) with no review by their due time."""
        now = self._clock()
        return [grant for grant in self.grants() if not grant.reviews and (grant.review_due or now) < now]

    def _grant(self, row: dict[str, Any], problem: str | None) -> Grant:
        now = self._clock()
        state = row["status"]
        if problem is not None:
            state = "unrecorded"
        elif state == "pending" and now >= row["requested_at"] + self.settings.pending_ttl:
            state = "expired"
        elif state == "approved" and row["expires_at"] is not None and now >= row["expires_at"]:
            state = "expired"
        ended = row.get("revoked_at") if row["status"] == "revoked" else row["expires_at"]
        due = None
        if problem is None and row["approved_at"] is not None and ended is not None and ended <= now:
            due = float(ended) + self.settings.review_within
        fields = {name: row[name] for name in Grant.__slots__ if name in row}
        reviews = tuple(self._duties.ledger.reviews.get(row["id"], ()))
        return Grant(**fields, state=state, problem=problem, reviews=reviews, review_due=due)

    def _recorded(self, grant_id: str, event: str, actor: Actor) -> tuple[Grant, Any]:
        """The grant and its chain record, refusing (on the record) a row that does not match it.

        Raises:
            BreakGlassError: no such grant, or its row is not on the record.
        """
        grant = self.get(grant_id)
        entry = self._duties.ledger.grants.get(grant_id)
        if grant.problem is not None or entry is None:
            why = f"grant {grant_id} is not on the record ({grant.problem}): not honoured"
            self._duties.record(event, actor, "refused", {"grant": grant_id, "error": why})
            raise BreakGlassError(why)
        return grant, entry

    def approve(self, approver: Actor, grant_id: str) -> Grant:
        """Approve a pending grant; its clock starts now.

        Raises:
            BreakGlassError: self-approval, no approver role or second factor, the grant is not pending, or its
                row is not on the record.
        """
        grant, entry = self._recorded(grant_id, "breakglass.approve", approver)
        try:
            self._duties.require_approver(approver, grant.subject)
        except BreakGlassError as exc:
            self._duties.record("breakglass.approve", approver, "refused", {"grant": grant_id, "error": str(exc)})
            raise
        if grant.state != "pending":
            raise BreakGlassError(f"grant {grant_id} is {grant.state}, not pending")
        now = self._clock()
        values = {"status": "approved", "approver": as_operator(approver).sub, "approved_at": now,
                  "expires_at": now + grant.ttl}  # fmt: skip
        detail = {"grant": grant_id, "requester": grant.subject, "expires_at": iso(now + grant.ttl)}
        if not self._duties.change("grant", entry, values, "breakglass.approve", approver, detail):
            raise BreakGlassError(f"grant {grant_id} changed while being approved")
        return self.get(grant_id)

    def revoke(self, actor: Actor, grant_id: str) -> Grant:
        """End a grant now. The requester or any approver may revoke.

        Raises:
            BreakGlassError: the actor is neither, the grant is already over, or its row is not on the record.
        """
        grant, entry = self._recorded(grant_id, "breakglass.revoke", actor)
        operator = as_operator(actor)
        if operator.sub != grant.subject and not operator.roles & set(self.settings.approver_roles):
            raise BreakGlassError("only the requester or an approver may revoke a grant")
        if grant.state not in ("pending", "approved"):
            raise BreakGlassError(f"grant {grant_id} is already {grant.state}")
        values = {"status": "revoked", "revoked_by": operator.sub, "revoked_at": self._clock()}
        if not self._duties.change("grant", entry, values, "breakglass.revoke", actor, {"grant": grant_id}):
            raise BreakGlassError(f"grant {grant_id} changed while being revoked")
        return self.get(grant_id)

    def review(self, reviewer: Actor, grant_id: str, outcome: str, note: str) -> Grant:
        """Sign off a grant that was approved: ``ok`` or ``misuse``, with a note. A chain record; one per grant.

        Raises:
            BreakGlassError: the reviewer requested or approved it, an unknown outcome, no note, the grant was
                never approved or is already reviewed, or its row is not on the record.
        """
        grant, _entry = self._recorded(grant_id, "breakglass.review", reviewer)
        operator = as_operator(reviewer)
        try:
            if operator.sub in (grant.subject, grant.approver):
                raise BreakGlassError("the requester and the approver of a grant cannot review it: a third person must")
            if outcome not in OUTCOMES:
                raise BreakGlassError(f"--outcome must be one of {', '.join(OUTCOMES)}")
            if len(note.strip()) < 10:
                raise BreakGlassError("--note must say what was checked, in at least 10 characters")
            if grant.approved_at is None:
                raise BreakGlassError(f"grant {grant_id} was never approved: there is nothing to review")
            if grant.reviews:
                raise BreakGlassError(f"grant {grant_id} is already reviewed (chain record {grant.reviews[0]['seq']})")
        except BreakGlassError as exc:
            self._duties.record("breakglass.review", reviewer, "refused", {"grant": grant_id, "error": str(exc)})
            raise
        review = {"outcome": outcome, "note": note.strip(), "reviewer": operator.sub, "at": iso(self._clock())}
        self._duties.record("breakglass.review", reviewer, "ok", {"grant": grant_id, "review": review},
                            catalog=grant.catalog, tool=grant.tool)  # fmt: skip
        return self.get(grant_id)

    # -- enforcement (the gateway's call path) --------------------------------------------------------------

    def may_use(self, principal: Principal) -> bool:
        """Whether the calling token may use a grant: a second factor unless ``breakglass.use_requires_mfa`` is off."""
        return not self.settings.use_requires_mfa or self._duties.has_mfa(principal)

    def _active(self, subject: str, catalog: str, tool: str | None) -> list[str]:
        """Ids of grants the chain says are approved and unexpired for this caller (one tool, or any), longest
        lasting first."""
        now, ledger = self._clock(), self._duties.ledger.refresh()
        found = []
        for grant_id in ledger.by_caller.get((subject, catalog), ()):
            state = ledger.grants[grant_id].state
            if state.get("status") == "approved" and now < float(state.get("expires_at") or 0):
                if tool is None or state.get("tool") == tool:
                    found.append((float(state["expires_at"]), grant_id))
        return [grant_id for _, grant_id in sorted(found, reverse=True)]

    def _honoured(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        good = []
        for row in rows:
            why = mismatch(row, self._duties.ledger.grants.get(row["id"]), "grant")
            if why is None:
                good.append(row)
            else:
                self._duties.flag("grant", row["id"], why)
        return good

    def active_grant(self, subject: str, catalog: str, tool: str) -> str | None:
        """The id of an approved, unexpired grant for exactly this subject, catalog and tool, if any, whose row
        matches its chain record. With no grant on the chain this is one query (the records since the last).

        Raises:
            UnavailableError: the store cannot be read (the call is then refused: fail closed).
        """
        for grant_id in self._active(subject, catalog, tool):
            if self._honoured(self._store.rows_by_id("grant", [grant_id])):
                return grant_id
        return None

    def granted_tools(self, subject: str, catalog: str) -> frozenset[str]:
        """Tools this subject holds an active, honoured grant for in ``catalog`` (for ``tools/list``).

        Raises:
            UnavailableError: the store cannot be read.
        """
        ids = self._active(subject, catalog, None)
        return frozenset(str(row["tool"]) for row in self._honoured(self._store.rows_by_id("grant", ids)))
