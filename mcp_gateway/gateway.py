"""The transport-free core: every governance rule lives here, once.

Transports turn a session into a :class:`~mcp_gateway.identity.Principal` and hand the request over.
The call path refuses cheaply before it works expensively:

1. catalog   the caller's audience picks the catalog; a tool not in it is unknown
2. policy    Casbin (compiled) decides; a tool the caller may not call is indistinguishable from unknown
3. limits    argument size, depth and JSON Schema, after the policy so a hidden tool's schema reveals nothing
4. audit     the decision row is committed before any backend work: no side effect goes unrecorded
5. backend   the in-boundary request, with server-side credentials only
6. audit     the outcome row is committed before the result goes out; if it cannot be, the result is withheld
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mcp_types as types

from mcp_gateway.audit import AuditEntry, AuditLog
from mcp_gateway.catalog import CatalogSet, ModelBackend, ToolSpec, catalog_fingerprint, load_catalogs
from mcp_gateway.config import Settings
from mcp_gateway.errors import (
    CallError,
    ConfigError,
    GatewayError,
    InvalidArgumentsError,
    RequestError,
    UnknownToolError,
    to_call_result,
    to_mcp_error,
)
from mcp_gateway.identity import Principal

if TYPE_CHECKING:
    from mcp_gateway.llm import ModelRouter, ProgressFn
from mcp_gateway.policy import PolicyEngine
from mcp_gateway.telemetry import current_trace_id
from mcp_gateway.upstream import HttpUpstream

__all__ = ["Gateway", "ReloadReport", "new_request_id"]

logger = logging.getLogger(__name__)

_VISIBLE_CACHE_SIZE = 4096


def new_request_id() -> str:
    return uuid.uuid4().hex


def _canonical_arguments(arguments: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentsError(f"arguments are not JSON: {exc}") from exc


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, iteratively (no recursion for an attacker to exhaust)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What one reload check found: which of policy and catalogs changed, and any failure."""

    policy_changed: bool
    catalogs_changed: bool
    errors: tuple[str, ...]


class Gateway:
    """Holds policy, catalogs, audit and backends; answers ``tools/list`` and ``tools/call`` for a principal."""

    def __init__(
        self,
        settings: Settings,
        *,
        audit: AuditLog,
        policy: PolicyEngine,
        upstream: HttpUpstream,
        models: ModelRouter | None = None,
    ) -> None:
        """Load catalogs and wire the components.

        Raises:
            ConfigError: a catalog does not load; the gateway refuses to start.
        """
        self.settings = settings
        self.audit = audit
        self.policy = policy
        self.upstream = upstream
        self._models = models
        self._catalog_files = catalog_fingerprint(settings.catalogs_dir)
        self._catalogs = load_catalogs(settings.catalogs_dir, settings.egress)
        self._visible: dict[tuple[Any, ...], tuple[types.Tool, ...]] = {}

    @property
    def catalogs(self) -> CatalogSet:
        return self._catalogs

    @property
    def models(self) -> ModelRouter:
        """The model router, built on first use: the OpenAI client costs about a second to import."""
        if self._models is None:
            from mcp_gateway.llm import ModelRouter

            self._models = ModelRouter(self.settings.egress)
        return self._models

    async def aclose(self) -> None:
        """Close the backends' connection pools."""
        await self.upstream.aclose()
        if self._models is not None:
            await self._models.aclose()

    def ready(self) -> tuple[bool, str | None]:
        """Whether calls can be served: the audit trail must be reachable (policy and catalogs always are)."""
        reason = self.audit.ping()
        return reason is None, reason

    def _audit(self, entry: AuditEntry) -> None:
        self.audit.record(entry)

    def visible_tools(self, principal: Principal) -> tuple[types.Tool, ...]:
        """The tools ``principal`` may call, in catalog order. Pure: no audit row."""
        snapshot, catalogs = self.policy.snapshot, self._catalogs
        key = (principal.subject, principal.roles, principal.catalog, snapshot.version, catalogs.version)
        cached = self._visible.get(key)
        if cached is None:
            cached = tuple(
                tool.definition
                for tool in catalogs.tools(principal.catalog)
                if snapshot.decide(principal.subject, principal.roles, principal.catalog, tool.name).allowed
            )
            if len(self._visible) >= _VISIBLE_CACHE_SIZE:
                self._visible.clear()
            self._visible[key] = cached
        return cached

    def list_tools(self, principal: Principal, request_id: str) -> list[types.Tool]:
        """Answer ``tools/list``: exactly the tools the caller may call.

        Raises:
            MCPError: the audit row could not be written (the list is withheld).
        """
        started = time.perf_counter()
        tools = self.visible_tools(principal)
        entry = AuditEntry(
            event="tools/list",
            decision="allow",
            outcome="ok",
            request_id=request_id,
            trace_id=current_trace_id(),
            subject=principal.subject,
            roles=principal.roles,
            catalog=principal.catalog,
            latency_ms=(time.perf_counter() - started) * 1000,
            policy_version=self.policy.snapshot.version,
            detail={"count": len(tools)},
        )
        try:
            self._audit(entry)
        except GatewayError as exc:
            raise to_mcp_error(exc, request_id) from exc
        return list(tools)

    async def call_tool(
        self,
        principal: Principal,
        name: str,
        arguments: Mapping[str, Any] | None,
        request_id: str,
        progress: ProgressFn | None = None,
    ) -> types.CallToolResult:
        """Answer ``tools/call`` under every rule in the module docstring.

        ``progress`` is given when the caller asked for progress notifications; a model tool then streams.

        Raises:
            MCPError: the tool is unknown to this caller (or hidden from it), or the refusal could not be audited.
        """
        started = time.perf_counter()
        snapshot = self.policy.snapshot
        base = AuditEntry(
            event="tools/call",
            decision="deny",
            outcome="",
            request_id=request_id,
            trace_id=current_trace_id(),
            subject=principal.subject,
            roles=principal.roles,
            catalog=principal.catalog,
            tool=name,
            policy_version=snapshot.version,
        )
        arguments = arguments or {}
        catalogs = self._catalogs
        tool = catalogs.lookup(principal.catalog, name)
        detail: dict[str, Any] | None = None
        decision_rule = "unknown-tool"
        try:
            if tool is None:
                raise UnknownToolError(f"{name!r} is not in catalog {principal.catalog!r}")
            base = _with(base, tool_digest=tool.digest)
            decision = snapshot.decide(principal.subject, principal.roles, principal.catalog, name)
            decision_rule = decision.rule
            if not decision.allowed:
                raise UnknownToolError(f"policy denies {name!r}: {decision.rule}")
            base = _with(base, decision="allow", rule=decision.rule)
            canonical = self._check_arguments(tool, arguments)
            base = _with(base, args_digest=hashlib.sha256(canonical).hexdigest())
            # The decision is on record before the backend is touched.
            self._audit(_with(base, outcome="started"))
            if isinstance(tool.backend, ModelBackend):
                outcome = await self.models.call(tool, catalogs.models, arguments, request_id, progress)
                result, detail = outcome.result, outcome.detail
            else:
                result = await self.upstream.call(tool, arguments, request_id)
        except GatewayError as exc:
            return self._refuse(_with(base, rule=base.rule or decision_rule), exc, started, request_id)
        self._audit(_with(base, event="tools/call.result", outcome="ok", latency_ms=_ms(started), detail=detail))
        return result

    def _refuse(self, entry: AuditEntry, exc: GatewayError, started: float, request_id: str) -> types.CallToolResult:
        outcome = _with(
            entry,
            event="tools/call.result" if entry.decision == "allow" and entry.args_digest else "tools/call",
            outcome=exc.code,
            latency_ms=_ms(started),
            detail={"error": str(exc)},
        )
        try:
            self._audit(outcome)
        except CallError as audit_exc:
            logger.error("audit unavailable; refusing request %s: %s", request_id, audit_exc)
            return to_call_result(audit_exc, request_id)
        if isinstance(exc, RequestError):
            raise to_mcp_error(exc, request_id) from exc
        assert isinstance(exc, CallError)  # noqa: S101 - the tree has exactly these two kinds of refusal
        return to_call_result(exc, request_id)

    def _check_arguments(self, tool: ToolSpec, arguments: Mapping[str, Any]) -> bytes:
        canonical = _canonical_arguments(arguments)
        limit = self.settings.max_argument_bytes
        if len(canonical) > limit:
            raise InvalidArgumentsError(
                f"arguments are {len(canonical)} bytes, over {limit}", public_detail=f"larger than {limit} bytes"
            )
        depth_limit = self.settings.max_argument_depth
        if _depth(dict(arguments), depth_limit) > depth_limit:
            raise InvalidArgumentsError(
                f"arguments nest deeper than {depth_limit}", public_detail=f"nested deeper than {depth_limit}"
            )
        error = next(iter(tool.validator.iter_errors(arguments)), None)
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "(root)"
            raise InvalidArgumentsError(
                f"schema: {where}: {error.message}", public_detail=f"{where}: {error.validator}"
            )
        return canonical

    def reload(self, actor: str = "gateway") -> ReloadReport:
        """Re-read policy and catalogs; swap in what loads, keep the last good version of what does not.

        Every change and every rejected version is one audit row; files left unchanged are not re-parsed, and a
        broken file left in place is reported once.
        """
        policy_changed, policy_error = self._reload_policy(actor)
        catalogs_changed, catalogs_error = self._reload_catalogs(actor)
        if policy_changed or catalogs_changed:
            self._visible.clear()
        errors = tuple(error for error in (policy_error, catalogs_error) if error)
        return ReloadReport(policy_changed, catalogs_changed, errors)

    def _reload_policy(self, actor: str) -> tuple[bool, str | None]:
        result = self.policy.reload()
        if not result.changed:
            return False, None
        detail = {"added": list(result.added), "removed": list(result.removed), "error": result.error}
        self._audit_change(
            "policy.reload", actor, result.ok, old=result.old_version, new=result.new_version, detail=detail
        )
        return result.ok, None if result.ok else f"policy: {result.error}"

    def _reload_catalogs(self, actor: str) -> tuple[bool, str | None]:
        fingerprint = catalog_fingerprint(self.settings.catalogs_dir)
        if fingerprint == self._catalog_files:
            return False, None
        self._catalog_files = fingerprint
        old = self._catalogs
        try:
            fresh = load_catalogs(self.settings.catalogs_dir, self.settings.egress)
        except ConfigError as exc:
            self._audit_change("catalog.reload", actor, False, old=old.version, new=None, detail={"error": str(exc)})
            return False, f"catalogs: {exc}"
        if fresh.version == old.version:
            return False, None
        self._catalogs = fresh
        self._audit_change(
            "catalog.reload", actor, True, old=old.version, new=fresh.version, detail=_catalog_diff(old, fresh)
        )
        return True, None

    def _audit_change(
        self, event: str, actor: str, ok: bool, *, old: str, new: str | None, detail: dict[str, Any]
    ) -> None:
        self._audit(
            AuditEntry(
                event=event,
                decision="allow" if ok else "error",
                outcome="ok" if ok else "rejected",
                request_id=new_request_id(),
                trace_id=current_trace_id(),
                subject=actor,
                policy_version=self.policy.snapshot.version,
                detail={"old_digest": old, "new_digest": new, **detail},
            )
        )


def _catalog_diff(old: CatalogSet, new: CatalogSet) -> dict[str, Any]:
    diff: dict[str, Any] = {}
    for name in sorted(set(old.catalogs) | set(new.catalogs)):
        before = {tool.name: tool.digest for tool in old.tools(name)}
        after = {tool.name: tool.digest for tool in new.tools(name)}
        diff[name] = {
            "added": sorted(set(after) - set(before)),
            "removed": sorted(set(before) - set(after)),
            "changed": sorted(tool for tool in set(before) & set(after) if before[tool] != after[tool]),
        }
    return {"catalogs": diff}


def _with(entry: AuditEntry, **changes: Any) -> AuditEntry:
    from dataclasses import replace

    return replace(entry, **changes)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
