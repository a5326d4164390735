"""Held calls: a second person approves one exact call, and the approval is consumed by that call.

A tool with ``approval: required`` in its catalog refuses each call with ``approval_required`` and an approval
id until a second person approves that exact call. The approval is bound to the caller, catalog, tool, the
SHA-256 of the canonical arguments and the policy version, expires after ``breakglass.approval_ttl`` and is
consumed by the one call it approves: a changed argument needs a new approval. The approver sees the arguments
redacted by the DLP rules (``approval show``), never their raw values.

Held calls live in the audit database beside the break-glass grants (store/grants.py), so every replica sees
them, and every change (held, approved, denied, consumed) is a hash-chain record the row names: an approval is
honoured only when its row matches its latest chain record (grantchain.py). The separation-of-duties checks and
the chained changes here (:class:`DutyChecker`) serve the break-glass grants as well.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp_gateway import dlp
from mcp_gateway.audit.log import AuditEntry, AuditLog, new_request_id
from mcp_gateway.canonical import canonical_text
from mcp_gateway.config import BreakGlassSettings
from mcp_gateway.errors import ApprovalRequiredError, BreakGlassError, UnavailableError
from mcp_gateway.grantchain import (
    CHAIN_EVENTS,
    ChainEntry,
    ChainLedger,
    call_state,
    grant_state,
    mismatch,
    state_digest,
)
from mcp_gateway.identity import Principal
from mcp_gateway.operators import Operator
from mcp_gateway.store.grants import BreakGlassStore

__all__ = ["Actor", "Approvals", "CallApproval", "DutyChecker", "as_operator"]

Actor = Principal | Operator


def as_operator(actor: Actor) -> Operator:
    """The operator a verified principal or operator stands for."""
    return actor if isinstance(actor, Operator) else Operator.from_principal(actor)


@dataclass(frozen=True, slots=True)
class CallApproval:
    """A held call's approval record; ``state`` adds ``expired`` and ``unrecorded`` (a row that does not match its
    chain record: never honoured) to the stored status. ``shown`` is the DLP-redacted arguments."""

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
    shown: Any
    state: str
    problem: str | None


class DutyChecker:
    """Separation of duties (who may ask, who may approve) and the chained record of each change."""

    def __init__(self, settings: BreakGlassSettings, audit: AuditLog | None, store: BreakGlassStore) -> None:
        self.settings = settings
        self._audit = audit
        self.store = store
        self.ledger = ChainLedger(lambda after: store.chain_records(after, CHAIN_EVENTS))
        self._flagged: set[tuple[str, str, str]] = set()

    def require_mfa(self, principal: Actor, what: str) -> None:
        """Refuse ``what`` unless the token proves a second factor (``breakglass.mfa_methods``).

        Raises:
            BreakGlassError: the token shows no second factor.
        """
        if not self.has_mfa(principal):
            raise BreakGlassError(
                f"{what} needs a token proving a second factor (amr with one of {list(self.settings.mfa_methods)})"
            )

    def has_mfa(self, principal: Actor) -> bool:
        return bool(set(principal.amr) & set(self.settings.mfa_methods))

    def require_approver(self, approver: Actor, requester: str) -> None:
        """Refuse unless ``approver`` is a second person with an approver role and a second factor.

        Raises:
            BreakGlassError: self-approval, no approver role or no second factor.
        """
        self.require_mfa(approver, "approving")
        if as_operator(approver).sub == requester:
            raise BreakGlassError("nobody approves their own request: a second person must approve")
        if not set(approver.roles) & set(self.settings.approver_roles):
            raise BreakGlassError(f"approving needs one of the roles {list(self.settings.approver_roles)}")

    def record(self, event: str, actor: Actor | str, outcome: str, detail: dict[str, Any], **fields: Any) -> int:
        """Write one audit row for a step, with the verified actor (``sub``, ``jti``, ``amr``); returns its id.

        Raises:
            UnavailableError: there is no trail, or the row could not be committed.
        """
        if self._audit is None:
            raise UnavailableError("no audit trail: grants and approvals cannot be recorded")
        roles: list[str] | None = None
        if not isinstance(actor, str):
            operator = as_operator(actor)
            roles, detail = sorted(operator.roles), {**detail, "actor": operator.actor()}
        entry = AuditEntry(
            event=event,
            decision="allow" if outcome == "ok" else "deny",
            outcome=outcome,
            request_id=new_request_id(),
            subject=actor if isinstance(actor, str) else as_operator(actor).sub,
            roles=roles,
            detail=detail,
            **fields,
        )
        return self._audit.record_at(entry)[0]

    def create(self, kind: str, row: dict[str, Any], event: str, actor: Actor, detail: dict[str, Any]) -> None:
        """Record a new row's state in the chain, then store the row naming that record."""
        state = grant_state(row) if kind == "grant" else call_state(row)
        seq = self.record(event, actor, "ok", {**detail, "state": state}, catalog=row["catalog"], tool=row["tool"])
        self.store.add(kind, {**row, "chain_seq": seq, "chain_digest": state_digest(state)})

    def change(
        self, kind: str, entry: ChainEntry, values: dict[str, Any], event: str, actor: Actor, detail: dict[str, Any]
    ) -> bool:
        """Change a row that matches its chain record ``entry``, record the new state, and name the record.

        Returns False when the row no longer holds that state (another approver or replica was first). A crash
        between the change and its record leaves a row that names a stale record: never honoured (fail closed).
        """
        row_id = str(entry.state["id"])
        expect = {"status": entry.state["status"], "chain_seq": entry.seq}
        if not self.store.transition(kind, row_id, expect, values):
            return False
        row = self.store.row(kind, row_id) or {}
        state = grant_state(row) if kind == "grant" else call_state(row)
        seq = self.record(event, actor, "ok", {**detail, "state": state}, catalog=row["catalog"], tool=row["tool"])
        self.store.set_chain(kind, row_id, seq, state_digest(state))
        return True

    def matching(self, kind: str, row_id: str) -> tuple[dict[str, Any] | None, ChainEntry | None, str | None]:
        """A row, its latest chain record and why they differ (None: they match). Refreshes the ledger first."""
        ledger = self.ledger.refresh()
        entry = (ledger.grants if kind == "grant" else ledger.calls).get(row_id)
        row = self.store.row(kind, row_id)
        return row, entry, mismatch(row, entry, kind)

    def flag(self, kind: str, row_id: str, why: str) -> None:
        """Record, once per process, that a row was not honoured because it does not match the chain."""
        if (kind, row_id, why) in self._flagged:
            return
        self._flagged.add((kind, row_id, why))
        event = "breakglass.mismatch" if kind == "grant" else "approval.mismatch"
        self.record(event, "gateway", "refused", {kind: row_id, "error": f"not honoured: {why}"})


class Approvals:
    """Held calls in the shared database: opened by the gateway, decided by a second person on the CLI."""

    def __init__(self, duties: DutyChecker, clock: Callable[[], float] = time.time) -> None:
        self._duties = duties
        self._store = duties.store
        self._clock = clock

    def claim_call(
        self,
        principal: Principal,
        tool: str,
        args_digest: str,
        policy_version: str,
        arguments: Mapping[str, Any] | None = None,
    ) -> str:
        """Consume an approval for exactly this call, or open (or reuse) a pending one.

        Returns:
            The id of the approval the call was admitted under.

        Raises:
            ApprovalRequiredError: no approved, unused, unexpired approval matches; carries the pending id.
            UnavailableError: the store or the trail cannot be read or written.
        """
        now = self._clock()
        binding = {"subject": principal.subject, "catalog": principal.catalog, "tool": tool,
                   "args_digest": args_digest, "policy_version": policy_version}  # fmt: skip
        ledger = self._duties.ledger.refresh()
        bound = [
            entry
            for entry in ledger.calls.values()
            if all(entry.state.get(name) == value for name, value in binding.items())
            and now < float(entry.state.get("expires_at") or 0)
        ]
        for entry in (entry for entry in bound if entry.state.get("status") == "approved"):
            if self._honoured(entry) and self._duties.change(
                "call", entry, {"status": "used", "used_at": now}, "approval.consume", principal,
                {"approval": entry.state["id"]},
            ):  # fmt: skip
                return str(entry.state["id"])
        pending = [entry for entry in bound if entry.state.get("status") == "pending" and self._honoured(entry)]
        if pending:
            approval_id = str(pending[0].state["id"])
        else:
            approval_id = uuid.uuid4().hex[:16]
            shown = canonical_text(dlp.redact(dict(arguments or {})))
            row = {"id": approval_id, **binding, "requested_at": now, "status": "pending",
                   "expires_at": now + self._duties.settings.approval_ttl, "redacted_args": shown}  # fmt: skip
            self._duties.create("call", row, "approval.hold", principal, {"approval": approval_id})
        raise ApprovalRequiredError(f"{tool} needs approval {approval_id}", approval_id=approval_id)

    def _honoured(self, entry: ChainEntry) -> bool:
        row_id = str(entry.state["id"])
        why = mismatch(self._store.row("call", row_id), entry, "call")
        if why is not None:
            self._duties.flag("call", row_id, why)
        return why is None

    def _call(self, row: dict[str, Any], now: float, problem: str | None) -> CallApproval:
        status = row["status"]
        state = "unrecorded" if problem else status
        if problem is None and status in ("pending", "approved") and now >= row["expires_at"]:
            state = "expired"
        shown = json.loads(row["redacted_args"]) if row.get("redacted_args") else None
        fields = {name: row[name] for name in CallApproval.__slots__ if name in row and name != "state"}
        return CallApproval(**fields, shown=shown, state=state, problem=problem)

    def calls(self) -> list[CallApproval]:
        """Every held call, newest first; one whose row does not match the chain is ``unrecorded``."""
        now, ledger = self._clock(), self._duties.ledger.refresh()
        return [
            self._call(row, now, mismatch(row, ledger.calls.get(row["id"]), "call")) for row in self._store.all("call")
        ]

    def get(self, approval_id: str) -> CallApproval:
        """One held call.

        Raises:
            BreakGlassError: no such held call.
        """
        row, _entry, why = self._duties.matching("call", approval_id)
        if row is None:
            raise BreakGlassError(f"no held call {approval_id!r}")
        return self._call(row, self._clock(), why)

    def decide_call(self, approver: Actor, approval_id: str, approve: bool) -> CallApproval:
        """Approve (or deny) one held call. The approval is good for that exact call until it expires.

        Raises:
            BreakGlassError: no such call, a row that is not on the record, self-approval, no approver role or
                second factor, or the call is not pending.
        """
        event = "approval.approve" if approve else "approval.deny"
        call = self.get(approval_id)
        _row, entry, _why = self._duties.matching("call", approval_id)
        try:
            if call.problem is not None or entry is None:
                raise BreakGlassError(f"held call {approval_id} is not on the record ({call.problem}): not honoured")
            self._duties.require_approver(approver, call.subject)
        except BreakGlassError as exc:
            self._duties.record(event, approver, "refused", {"approval": approval_id, "error": str(exc)})
            raise
        if call.state != "pending":
            raise BreakGlassError(f"held call {approval_id} is {call.state}, not pending")
        values = {"status": "approved" if approve else "denied", "approver": as_operator(approver).sub,
                  "approved_at": self._clock()}  # fmt: skip
        detail = {"approval": approval_id, "requester": call.subject, "args_digest": call.args_digest}
        if not self._duties.change("call", entry, values, event, approver, detail):
            raise BreakGlassError(f"held call {approval_id} changed while being decided")
        return self.get(approval_id)
