"""The transport-free core: every governance rule lives here, once.

Transports turn a session into a :class:`~mcp_gateway.identity.Principal` and hand the request over.
A call passes four named stages, each refusing cheaply before the next works expensively:

1. admit     the caller's audience picks the catalog; a tool not in it is unknown. Casbin (compiled) decides; a
             tool the caller may not call is indistinguishable from unknown, unless an approved break-glass grant
             covers exactly this subject and tool (rule ``breakglass:<id>``)
2. limit     after the policy, so a hidden tool's limits and schema reveal nothing, cheapest first: rate limit
             (token bucket), argument depth and size, JSON Schema, DLP scan of the arguments, then the
             second-person approval of this exact call where the tool requires one
3. dispatch  the decision row is committed before any backend work (no side effect goes unrecorded); the
             backend makes the in-boundary request with server-side credentials only, given the one parsed (and,
             under a ``redact`` action, redacted) argument object that was validated and digested; the result is
             scanned: ``block`` withholds it, ``redact`` rewrites it
4. record    the outcome row is committed before the result goes out; if it cannot be, the result is withheld
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types

from mcp_gateway import limits
from mcp_gateway.audit.log import AuditLog
from mcp_gateway.backends import BackendCall, Backends, ProgressFn
from mcp_gateway.breakglass import BreakGlass
from mcp_gateway.call import CALL, RESULT, CallRecord, audited_name, caller_detail, caller_entry, span_attributes
from mcp_gateway.catalog import CatalogSet, ToolSpec
from mcp_gateway.config import Settings
from mcp_gateway.errors import (
    CallError,
    GatewayError,
    RequestError,
    UnavailableError,
    UnknownToolError,
    to_call_result,
    to_mcp_error,
)
from mcp_gateway.federation import Federation, merged_catalogs
from mcp_gateway.federation.watchers import ToolWatchers
from mcp_gateway.identity import Principal
from mcp_gateway.policy import PolicyEngine, PolicySnapshot
from mcp_gateway.ratelimit import RateLimiter
from mcp_gateway.reload import Reloader, ReloadReport

if TYPE_CHECKING:  # only the type: prometheus_client is imported only when metrics are served
    from mcp_gateway.metrics import GatewayMetrics

__all__ = ["Gateway"]

logger = logging.getLogger(__name__)

_VISIBLE_CACHE_SIZE = 4096


async def _send_list_changed(connection: Any) -> None:
    await connection.outbound.notify("notifications/tools/list_changed", None)


class Gateway:
    """Holds policy, catalogs, audit and backends; answers ``tools/list`` and ``tools/call`` for a principal."""

    def __init__(
        self,
        settings: Settings,
        *,
        audit: AuditLog,
        policy: PolicyEngine,
        backends: Backends,
        limiter: RateLimiter | None = None,
        breakglass: BreakGlass | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        """Load catalogs and wire the components. Without ``breakglass``, no grant applies and held calls fail closed;
        ``metrics`` (when ``metrics.enabled``) is told of every call's end, and of upstream health (``upstream_up``).

        Raises:
            ConfigError: a catalog does not load; the gateway refuses to start.
        """
        self.settings = settings
        self.audit = audit
        self.policy = policy
        self.backends = backends
        self._config = Reloader(settings, policy, audit)
        self._visible: dict[tuple[Any, ...], tuple[types.Tool, ...]] = {}
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.breakglass = breakglass
        self.federation: Federation | None = None
        self._merged: tuple[CatalogSet, str, CatalogSet] | None = None
        self.watchers = ToolWatchers(_send_list_changed)
        self.metrics = metrics

    @property
    def catalogs(self) -> CatalogSet:
        """The loaded catalogs, with the federation's pinned upstream tools laid over them."""
        base, federation = self._config.catalogs, self.federation
        if federation is None:
            return base
        merged = self._merged
        if merged is None or merged[0] is not base or merged[1] != federation.version:
            merged = self._merged = (
                base,
                federation.version,
                merged_catalogs(base, federation.tools(), federation.version),
            )
        return merged[2]

    @property
    def loaded_catalogs(self) -> CatalogSet:
        """The catalogs as loaded from their files, without federated tools."""
        return self._config.catalogs

    def attach_federation(self, federation: Federation) -> None:
        """Publish ``federation``'s tools; when they change, clients whose view changed are told."""
        self.federation = federation
        federation.on_change = self._tools_changed

    async def _tools_changed(self) -> None:
        self._visible.clear()
        await self.watchers.changed(lambda principal: self.visible_names(principal))

    def visible_names(self, principal: Principal) -> tuple[str, ...]:
        """The names of the tools ``principal`` would list now (grants included)."""
        return tuple(tool.name for tool in self.visible_tools(principal) + self._granted(principal))

    async def aclose(self) -> None:
        """Close the federation's sessions, the backends' connection pools, the bucket and break-glass stores (the audit
        trail is closed by its owner)."""
        if self.federation is not None:
            await self.federation.aclose()
        await self.backends.aclose()
        self.limiter.close()
        if self.breakglass is not None:
            self.breakglass.close()

    def ready(self) -> tuple[bool, str | None]:
        """Whether a call could be served now: a write to the audit trail commits within its bound, and a shared
        rate-limit store answers (policy and catalogs are loaded before the gateway starts, and a broken reload
        keeps the last good version). Blocking, for up to ``audit.write_timeout`` plus ``limits.timeout``: call it
        off the event loop."""
        reason = self.audit.writable() or self.limiter.store.ping()
        return reason is None, reason

    def reload(self, actor: str = "gateway") -> ReloadReport:
        """Re-read policy and catalogs (see :mod:`mcp_gateway.reload`); the per-caller tool lists follow."""
        report = self._config.reload(actor)
        if report.policy_changed or report.catalogs_changed:
            self._visible.clear()
        return report

    def upstreams(self) -> dict[str, dict[str, Any]]:
        """Each upstream server's state (readyz): its tools are listed only while it is up."""
        return self.federation.status() if self.federation is not None else {}

    # -- tools/list ---------------------------------------------------------------------------------------

    def visible_tools(self, principal: Principal) -> tuple[types.Tool, ...]:
        """The tools ``principal`` may call, in catalog order. Pure: no audit row."""
        snapshot, catalogs = self.policy.snapshot, self.catalogs
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

    async def list_tools(self, principal: Principal, request_id: str) -> list[types.Tool]:
        """Answer ``tools/list``: exactly the tools the caller may call.

        Raises:
            MCPError: the audit row could not be written (the list is withheld).
        """
        started = time.perf_counter()
        try:
            tools = self.visible_tools(principal) + self._granted(principal)
        except GatewayError as exc:
            raise to_mcp_error(exc, request_id) from exc
        detail = {"count": len(tools), **(caller_detail(principal) or {})}
        entry = caller_entry(
            principal,
            "tools/list",
            request_id,
            self.policy.snapshot.version,
            decision="allow",
            outcome="ok",
            detail=detail,
        )
        entry.latency_ms = (time.perf_counter() - started) * 1000
        try:
            await self.audit.append(entry)
        except GatewayError as exc:
            raise to_mcp_error(exc, request_id) from exc
        return list(tools)

    def watch(self, connection: object, principal: Principal, tools: list[types.Tool]) -> None:
        """Remember what ``connection``'s client listed, to tell it when that changes."""
        self.watchers.watch(connection, principal, tuple(tool.name for tool in tools))

    def _granted(self, principal: Principal) -> tuple[types.Tool, ...]:
        """Tools shown because of an active break-glass grant, beyond what the policy shows."""
        if self.breakglass is None or principal.catalog not in self.settings.breakglass.catalogs:
            return ()
        if not self.breakglass.may_use(principal):
            return ()
        granted = self.breakglass.granted_tools(principal.subject, principal.catalog)
        if not granted:
            return ()
        shown = {tool.name for tool in self.visible_tools(principal)}
        return tuple(
            tool.definition
            for tool in self.catalogs.tools(principal.catalog)
            if tool.name in granted and tool.name not in shown
        )

    # -- tools/call ---------------------------------------------------------------------------------------

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
        # One snapshot of policy and catalogs for the whole call: a reload mid-call does not change its rules.
        snapshot, catalogs = self.policy.snapshot, self.catalogs
        call = CallRecord.open(principal, name, request_id, snapshot.version, self.metrics)
        arguments = arguments or {}
        try:
            tool = self._admit(call, principal, name, catalogs, snapshot)
            forwarded = await self._limit(call, principal, tool, arguments)
            result = await self._dispatch(call, tool, forwarded, BackendCall(request_id, catalogs.models, progress))
            await self._record(call)
        except GatewayError as exc:
            return await self._refuse(call, exc)
        except Exception as exc:  # record the outcome, then re-raise to the transport's handler
            await self._record_failure(call, exc, "internal_error")
            raise
        except anyio.get_cancelled_exc_class() as exc:  # the caller went away: its call still gets an outcome
            with anyio.CancelScope(shield=True):
                await self._record_failure(call, exc, "cancelled")
            raise
        call.timer.finish(span_attributes(call.entry), error_type=None, arguments=arguments)
        return result

    def _admit(
        self, call: CallRecord, principal: Principal, name: str, catalogs: CatalogSet, snapshot: PolicySnapshot
    ) -> ToolSpec:
        """Catalog, then policy (or a break-glass grant).

        Raises:
            UnknownToolError: not in the caller's catalog, or the policy denies it and no grant covers it.
        """
        entry = call.entry
        tool = catalogs.lookup(principal.catalog, name)
        call.timer.mark("catalog")
        # A hidden tool and an unknown name do the same work up to the refusal: both are decided and both look
        # for a grant (a database query: 0.2 ms on local SQLite, milliseconds on a remote database), or timing
        # would tell them apart where the error body cannot. A name that cannot name a tool is looked up by its
        # bounded audited form, so a megabyte name costs no more than any other.
        checked = audited_name(name)
        decision = snapshot.decide(principal.subject, principal.roles, principal.catalog, checked)
        grant = None if tool is not None and decision.allowed else self._grant_for(call, principal, checked)
        call.timer.mark("policy")
        if tool is None:
            entry.rule = "unknown-tool"
            raise UnknownToolError(f"not in catalog {principal.catalog!r}")
        entry.tool_digest, entry.rule = tool.digest, decision.rule
        if not decision.allowed:
            if grant is None:
                raise UnknownToolError(f"policy denies: {decision.rule}")
            call.add_detail(breakglass=grant, policy_rule=decision.rule)
            entry.rule = f"breakglass:{grant}"
        entry.decision = "allow"
        return tool

    def _grant_for(self, call: CallRecord, principal: Principal, name: str) -> str | None:
        if self.breakglass is None or principal.catalog not in self.settings.breakglass.catalogs:
            return None
        grant = self.breakglass.active_grant(principal.subject, principal.catalog, name)
        if grant is not None and not self.breakglass.may_use(principal):
            # The grant's holder is refused as if there were none; the row says why (breakglass.use_requires_mfa).
            call.add_detail(breakglass_refused=f"grant {grant}: the calling token proves no second factor")
            return None
        return grant

    async def _limit(
        self, call: CallRecord, principal: Principal, tool: ToolSpec, arguments: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """Rate limit, argument checks, DLP of the arguments and, where required, the call's approval; returns
        the arguments the backend gets.

        Raises:
            CallError: a subclass naming the limit that refused the call.
        """
        # A grant changes the decision only: the limits apply to every call.
        await self.limiter.take(principal.catalog, principal.subject, tool.name, tool.rate_limit)
        settings = self.settings
        canonical = limits.check_arguments(
            tool, arguments, max_depth=settings.max_argument_depth, max_bytes=settings.max_argument_bytes
        )
        digest = hashlib.sha256(canonical).hexdigest()
        call.entry.args_digest = digest
        forwarded, call.entry = limits.scan_arguments(tool, arguments, call.entry)
        call.timer.mark("limits")
        if tool.approval_required:
            if self.breakglass is None:
                raise UnavailableError(f"{tool.name} requires approval but no approval store is configured")
            version = call.entry.policy_version or ""
            call.add_detail(approval=self.breakglass.claim_call(principal, tool.name, digest, version, arguments))
            call.timer.mark("approval")
        return forwarded

    async def _dispatch(
        self, call: CallRecord, tool: ToolSpec, arguments: Mapping[str, Any], context: BackendCall
    ) -> types.CallToolResult:
        """Decision row, backend, DLP of the result; returns what the caller may see.

        Raises:
            CallError: the decision row could not be committed, the backend failed, or the result is blocked.
        """
        # The decision is on record before the backend is touched, unless the catalog marks the tool read-only
        # and outcome-only: nothing upstream changes, so its one row is written after the answer.
        if tool.decision_first:
            await self.audit.append(replace(call.entry, outcome="started"))
            call.opened = True
            call.timer.mark("audit_decision")
        backend = self.backends.for_tool(tool)
        answer = await backend.call(tool, arguments, context)
        call.timer.mark("backend")
        call.add_detail(**answer.detail, backend=backend.describe(tool))
        result, call.entry = limits.scan_result(tool, answer.result, call.entry)
        call.timer.mark("result_dlp")
        return result

    async def _record(self, call: CallRecord) -> None:
        """The outcome row, committed before the result goes out; if it cannot be, ``_refuse`` withholds it."""
        entry = call.entry
        entry.event, entry.outcome, entry.latency_ms = RESULT if call.opened else CALL, "ok", call.ms()
        await self.audit.append(entry)
        call.timer.mark("audit_outcome")

    async def _refuse(self, call: CallRecord, exc: GatewayError) -> types.CallToolResult:
        entry = call.entry
        request_id = entry.request_id or ""
        outcome = replace(
            entry,
            # The outcome of a call whose decision row is on record; otherwise the refusal is the decision.
            event=RESULT if call.opened else CALL,
            outcome=exc.code,
            latency_ms=call.ms(),
            detail={**(entry.detail or {}), **getattr(exc, "audit_detail", {}), "error": str(exc)},
        )
        try:
            await self.audit.append(outcome)
        except CallError as audit_exc:
            logger.error("audit unavailable; refusing request %s: %s", request_id, audit_exc)
            call.timer.finish(span_attributes(outcome), error_type=audit_exc.code)
            return to_call_result(audit_exc, request_id)
        call.timer.finish(span_attributes(outcome), error_type=exc.code)
        if isinstance(exc, RequestError):
            raise to_mcp_error(exc, request_id) from exc
        assert isinstance(exc, CallError)  # noqa: S101 - the tree has exactly these two kinds of refusal
        return to_call_result(exc, request_id)

    async def _record_failure(self, call: CallRecord, exc: BaseException, outcome: str) -> None:
        failure = replace(
            call.entry,
            event=RESULT if call.opened else CALL,
            outcome=outcome,
            latency_ms=call.ms(),
            detail={**(call.entry.detail or {}), "error": type(exc).__name__},
        )
        with suppress(GatewayError):
            await self.audit.append(failure)
        call.timer.finish(span_attributes(failure), error_type=outcome)
