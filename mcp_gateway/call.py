"""One call in flight: the audit entry its stages fill in, its stage timer, and what its span carries."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from mcp_gateway.audit.log import AuditEntry
from mcp_gateway.catalog import TOOL_NAME
from mcp_gateway.identity import Principal
from mcp_gateway.telemetry import (
    ATTR_ARGS_DIGEST,
    ATTR_CATALOG,
    ATTR_DECISION,
    ATTR_POLICY_VERSION,
    ATTR_REQUEST_ID,
    ATTR_RULE,
    ATTR_SUBJECT,
    ATTR_TOOL_DIGEST,
    CallObserver,
    CallTimer,
    current_span_id,
    current_trace_id,
)

__all__ = ["CALL", "RESULT", "CallRecord", "audited_name", "caller_detail", "caller_entry", "span_attributes"]

CALL = "tools/call"
RESULT = "tools/call.result"


def audited_name(name: str) -> str:
    """The tool name as the trail records it: a caller-chosen name that cannot name a tool is not stored
    verbatim (it could be megabytes, or carry terminal escapes), only a digest of it."""
    if TOOL_NAME.fullmatch(name):
        return name
    return "invalid:" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def caller_detail(principal: Principal, name: str | None = None, span_id: str | None = None) -> dict[str, Any] | None:
    """What the trail keeps about the caller besides subject and roles: token id, MFA methods, span; and, for a
    name that cannot name a tool, a short printable preview of it."""
    detail: dict[str, Any] = {}
    if span_id:
        detail["span_id"] = span_id
    if principal.token_id:
        detail["token_id"] = principal.token_id
    if principal.amr:
        detail["amr"] = list(principal.amr)
    if name is not None and not TOOL_NAME.fullmatch(name):
        detail["name_preview"] = ascii(name[:64])
    return detail or None


def caller_entry(
    principal: Principal,
    event: str,
    request_id: str,
    policy_version: str,
    *,
    decision: str,
    outcome: str,
    detail: dict[str, Any] | None,
) -> AuditEntry:
    """An audit entry for a request from ``principal``, in the current trace."""
    return AuditEntry(
        event=event,
        decision=decision,
        outcome=outcome,
        request_id=request_id,
        trace_id=current_trace_id(),
        subject=principal.subject,
        roles=principal.roles,
        catalog=principal.catalog,
        policy_version=policy_version,
        detail=detail,
    )


@dataclass(slots=True)
class CallRecord:
    """One ``tools/call`` in flight: the audit entry the stages fill in, and the stage timer."""

    entry: AuditEntry
    timer: CallTimer
    started: float
    opened: bool = False  # whether the decision row (outcome "started") is on record

    def ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def add_detail(self, **detail: Any) -> None:
        self.entry.detail = {**(self.entry.detail or {}), **detail}

    @classmethod
    def open(
        cls,
        principal: Principal,
        name: str,
        request_id: str,
        policy_version: str,
        observer: CallObserver | None = None,
    ) -> CallRecord:
        """The record of a call that has only just arrived: denied, with no outcome, until a stage says otherwise;
        ``observer`` (the gateway's metrics) is told of its end."""
        detail = caller_detail(principal, name, current_span_id())
        entry = caller_entry(principal, CALL, request_id, policy_version, decision="deny", outcome="", detail=detail)
        entry.tool = audited_name(name)
        return cls(entry, CallTimer(observer), time.perf_counter())


def span_attributes(entry: AuditEntry) -> dict[str, Any]:
    return {
        ATTR_DECISION: entry.decision,
        ATTR_RULE: entry.rule,
        ATTR_CATALOG: entry.catalog,
        ATTR_SUBJECT: entry.subject,
        ATTR_POLICY_VERSION: entry.policy_version,
        ATTR_REQUEST_ID: entry.request_id,
        ATTR_TOOL_DIGEST: entry.tool_digest,
        ATTR_ARGS_DIGEST: entry.args_digest,
    }
