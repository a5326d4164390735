"""Held calls: a second person approves one exact call, and the approval is consumed by that call.

A tool with ``approval: required`` in its catalog refuses each call with ``approval_required`` and an approval
id until a second person approves that exact call. The approval is bound to the caller, catalog, tool, the
SHA-256 of the canonical arguments and the policy version, expires after ``breakglass.approval_ttl`` and is
consumed by the one call it approves: a changed argument needs a new approval.

Held calls live in the audit database beside the break-glass grants (store/grants.py), so every replica sees
them. Every decision is written to the audit trail too. The separation-of-duties checks here
(:class:`DutyChecker`) serve the break-glass grants as well.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mcp_gateway.audit.log import AuditEntry, AuditLog, new_request_id
from mcp_gateway.config import BreakGlassSettings
from mcp_gateway.errors import ApprovalRequiredError, BreakGlassError
from mcp_gateway.identity import Principal
from mcp_gateway.store.grants import BreakGlassStore

__all__ = ["Approvals", "CallApproval", "DutyChecker"]


@dataclass(frozen=True, slots=True)
class CallApproval:
    """A held call's approval record; ``state`` adds ``expired`` to the stored status."""

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


class DutyChecker:
    """Separation of duties: who may ask, who may approve, and the audit row for each step."""

    def __init__(self, settings: BreakGlassSettings, audit: AuditLog | None) -> None:
        self.settings = settings
        self._audit = audit

    def require_mfa(self, principal: Principal, what: str) -> None:
        """Refuse ``what`` unless the principal's token proves a second factor (``breakglass.mfa_methods``).

        Raises:
            BreakGlassError: the principal's token shows no second factor.
        """
        if not set(principal.amr) & set(self.settings.mfa_methods):
            raise BreakGlassError(
                f"{what} needs a token proving a second factor (amr with one of {list(self.settings.mfa_methods)})"
            )

    def require_approver(self, approver: Principal, requester: str) -> None:
        """Refuse unless ``approver`` is a second person with an approver role and a second factor.

        Raises:
            BreakGlassError: self-approval, no approver role or no second factor.
        """
        self.require_mfa(approver, "approving")
        if approver.subject == requester:
            raise BreakGlassError("nobody approves their own request: a second person must approve")
        if not set(approver.roles) & set(self.settings.approver_roles):
            raise BreakGlassError(f"approving needs one of the roles {list(self.settings.approver_roles)}")

    def record(self, event: str, actor: Principal | str, outcome: str, detail: dict[str, Any], **fields: Any) -> None:
        """Write one audit row for a step (nothing without a trail).

        Raises:
            UnavailableError: the row could not be committed.
        """
        if self._audit is None:
            return
        subject = actor if isinstance(actor, str) else actor.subject
        roles = None if isinstance(actor, str) else actor.roles
        self._audit.record(
            AuditEntry(
                event=event,
                decision="allow" if outcome == "ok" else "deny",
                outcome=outcome,
                request_id=new_request_id(),
                subject=subject,
                roles=roles,
                detail=detail,
                **fields,
            )
        )


class Approvals:
    """Held calls in the shared database: opened by the gateway, decided by a second person on the CLI."""

    def __init__(self, store: BreakGlassStore, duties: DutyChecker, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._duties = duties
        self._clock = clock

    def claim_call(self, principal: Principal, tool: str, args_digest: str, policy_version: str) -> str:
        """Consume an approval for exactly this call, or open (or reuse) a pending one.

        Returns:
            The id of the approval the call was admitted under.

        Raises:
            ApprovalRequiredError: no approved, unused, unexpired approval matches; carries the pending id.
            UnavailableError: the store cannot be read or written.
        """
        now = self._clock()
        binding = {
            "subject": principal.subject,
            "catalog": principal.catalog,
            "tool": tool,
            "args_digest": args_digest,
            "policy_version": policy_version,
        }
        claimed = self._store.consume_call(binding, now)
        if claimed is not None:
            return claimed
        approval_id = self._store.pending_call(binding, now)
        if approval_id is None:
            approval_id = uuid.uuid4().hex[:16]
            expires_at = now + self._duties.settings.approval_ttl
            row = {"id": approval_id, **binding, "requested_at": now, "expires_at": expires_at, "status": "pending"}
            self._store.add_call(row)
        raise ApprovalRequiredError(f"{tool} needs approval {approval_id}", approval_id=approval_id)

    def calls(self) -> list[CallApproval]:
        """Every held call, newest first."""
        now = self._clock()
        out = []
        for row in self._store.calls():
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
        self._duties.require_approver(approver, call.subject)
        if call.state != "pending":
            raise BreakGlassError(f"held call {approval_id} is {call.state}, not pending")
        status = "approved" if approve else "denied"
        self._store.decide_call(approval_id, status, approver.subject, self._clock())
        self._duties.record(
            "approval.approve" if approve else "approval.deny",
            approver,
            "ok",
            {"approval": approval_id, "requester": call.subject, "args_digest": call.args_digest},
            catalog=call.catalog,
            tool=call.tool,
        )
        return next(item for item in self.calls() if item.id == approval_id)
