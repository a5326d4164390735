"""The transport-free core: every governance rule lives here, once.

Transports turn a session into a :class:`~mcp_gateway.identity.Principal` and hand the request over.
The call path refuses cheaply before it works expensively:

1. catalog   the caller's audience picks the catalog; a tool not in it is unknown
2. policy    Casbin (compiled) decides; a tool the caller may not call is indistinguishable from unknown,
             unless an approved break-glass grant covers exactly this subject and tool (rule ``breakglass:<id>``)
3. limits    after the policy, so a hidden tool's limits and schema reveal nothing, cheapest first:
             rate limit (token bucket), argument depth and size, JSON Schema, DLP scan of the arguments,
             then the second-person approval of this exact call where the tool requires one
4. audit     the decision row is committed before any backend work: no side effect goes unrecorded
5. backend   the in-boundary request, with server-side credentials only, given the one parsed (and, under a
             ``redact`` action, redacted) argument object that was validated and digested
6. DLP       the result is scanned; ``block`` withholds it, ``redact`` rewrites it
7. audit     the outcome row is committed before the result goes out; if it cannot be, the result is withheld
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import mcp_types as types

from mcp_gateway import dlp
from mcp_gateway.audit.log import AuditEntry, AuditLog
from mcp_gateway.backends.http import HttpUpstream
from mcp_gateway.breakglass import BreakGlass
from mcp_gateway.catalog import TOOL_NAME, CatalogSet, ModelBackend, ToolSpec, catalog_fingerprint, load_catalogs
from mcp_gateway.config import Settings
from mcp_gateway.errors import (
    CallError,
    ConfigError,
    DlpBlockedError,
    GatewayError,
    InvalidArgumentsError,
    RequestError,
    UnavailableError,
    UnknownToolError,
    to_call_result,
    to_mcp_error,
)
from mcp_gateway.identity import Principal
from mcp_gateway.policy import PolicyEngine, ReloadResult
from mcp_gateway.ratelimit import RateLimiter
from mcp_gateway.telemetry import (
    ATTR_ARGS_DIGEST,
    ATTR_CATALOG,
    ATTR_DECISION,
    ATTR_POLICY_VERSION,
    ATTR_REQUEST_ID,
    ATTR_RULE,
    ATTR_SUBJECT,
    ATTR_TOOL_DIGEST,
    CallTimer,
    current_span_id,
    current_trace_id,
    tracer,
)

if TYPE_CHECKING:
    from mcp_gateway.backends.model import ModelRouter, ProgressFn

__all__ = ["Gateway", "ReloadReport", "new_request_id"]

logger = logging.getLogger(__name__)

_VISIBLE_CACHE_SIZE = 4096


CALL = "tools/call"
RESULT = "tools/call.result"


def _audited_name(name: str) -> str:
    """The tool name as the trail records it: a caller-chosen name that cannot name a tool is not stored
    verbatim (it could be megabytes, or carry terminal escapes), only a digest of it."""
    if TOOL_NAME.fullmatch(name):
        return name
    return "invalid:" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _caller_detail(principal: Principal, name: str | None = None, span_id: str | None = None) -> dict[str, Any] | None:
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


def new_request_id() -> str:
    return uuid.uuid4().hex


# allow_nan=False: NaN and Infinity are not JSON, and a backend would parse them differently (or not at all).
# One encoder for the process: json.dumps with options builds a new one per call.
_ARGUMENTS_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _canonical_arguments(arguments: Mapping[str, Any]) -> bytes:
    # Lone surrogates fail to encode (UnicodeEncodeError is a ValueError).
    try:
        return _ARGUMENTS_ENCODER.encode(arguments).encode()
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
        limiter: RateLimiter | None = None,
        breakglass: BreakGlass | None = None,
        models: ModelRouter | None = None,
    ) -> None:
        """Load catalogs and wire the components. Without ``breakglass``, no grant applies and held calls fail closed.

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
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.breakglass = breakglass

    @property
    def catalogs(self) -> CatalogSet:
        return self._catalogs

    @property
    def models(self) -> ModelRouter:
        """The model router, built on first use: the OpenAI client costs about a second to import."""
        if self._models is None:
            from mcp_gateway.backends.model import ModelRouter

            self._models = ModelRouter(self.settings.egress)
        return self._models

    async def aclose(self) -> None:
        """Close the backends' connection pools and the break-glass store (the audit trail is closed by its owner)."""
        await self.upstream.aclose()
        if self._models is not None:
            await self._models.aclose()
        if self.breakglass is not None:
            self.breakglass.close()

    def ready(self) -> tuple[bool, str | None]:
        """Whether calls can be served: the audit trail must be reachable (policy and catalogs always are)."""
        reason = self.audit.ping()
        return reason is None, reason

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
        try:
            tools = self.visible_tools(principal) + self._granted(principal)
        except GatewayError as exc:
            raise to_mcp_error(exc, request_id) from exc
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
            detail={"count": len(tools), **(_caller_detail(principal) or {})},
        )
        try:
            self.audit.record(entry)
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
        timer = CallTimer()
        snapshot = self.policy.snapshot
        span_id = current_span_id()
        entry = AuditEntry(
            event=CALL,
            decision="deny",
            outcome="",
            request_id=request_id,
            trace_id=current_trace_id(),
            subject=principal.subject,
            roles=principal.roles,
            catalog=principal.catalog,
            tool=_audited_name(name),
            policy_version=snapshot.version,
            detail=_caller_detail(principal, name, span_id),
        )
        arguments = arguments or {}
        catalogs = self._catalogs
        opened = False  # whether the decision row (outcome "started") is on record
        try:
            tool = catalogs.lookup(principal.catalog, name)
            timer.mark("catalog")
            if tool is None:
                entry.rule = "unknown-tool"
                raise UnknownToolError(f"not in catalog {principal.catalog!r}")
            decision = snapshot.decide(principal.subject, principal.roles, principal.catalog, name)
            entry.tool_digest, entry.rule = tool.digest, decision.rule
            if not decision.allowed:
                grant = self._grant_for(principal, name)
                if grant is None:
                    raise UnknownToolError(f"policy denies: {decision.rule}")
                detail = {**(entry.detail or {}), "breakglass": grant, "policy_rule": decision.rule}
                entry.rule, entry.detail = f"breakglass:{grant}", detail
            timer.mark("policy")
            entry.decision = "allow"
            # A grant changes the decision only: the limits below apply to every call.
            await self.limiter.take(principal.catalog, principal.subject, name, tool.rate_limit)
            canonical = self._check_arguments(tool, arguments)
            digest = hashlib.sha256(canonical).hexdigest()
            entry.args_digest = digest
            forwarded, entry = self._scan_arguments(tool, arguments, entry)
            timer.mark("limits")
            if tool.approval_required:
                if self.breakglass is None:
                    raise UnavailableError(f"{name} requires approval but no approval store is configured")
                approval = self.breakglass.claim_call(principal, name, digest, snapshot.version)
                entry.detail = {**(entry.detail or {}), "approval": approval}
                timer.mark("approval")
            # The decision is on record before the backend is touched, unless the catalog marks the tool
            # read-only and outcome-only: nothing upstream changes, so its one row is written after the answer.
            if tool.decision_first:
                await self.audit.append(replace(entry, outcome="started"))
                opened = True
                timer.mark("audit_decision")
            if isinstance(tool.backend, ModelBackend):
                answer = await self.models.call(tool, catalogs.models, forwarded, request_id, progress)
                result = answer.result
                if answer.detail:
                    entry.detail = {**(entry.detail or {}), **answer.detail}
            else:
                result = await self.upstream.call(tool, forwarded, request_id)
            timer.mark("backend")
            entry.detail = {**(entry.detail or {}), "backend": _backend(tool)}
            result, entry = self._scan_result(tool, result, entry)
            timer.mark("result_dlp")
            # The outcome is on record before the result goes out; if it cannot be, _refuse withholds it.
            entry.event, entry.outcome, entry.latency_ms = RESULT if opened else CALL, "ok", _ms(started)
            await self.audit.append(entry)
            timer.mark("audit_outcome")
        except GatewayError as exc:
            return await self._refuse(entry, exc, started, request_id, timer, opened=opened)
        except Exception as exc:  # record the outcome, then re-raise to server.py's handler
            failure = replace(
                entry,
                event=RESULT if opened else CALL,
                outcome="internal_error",
                latency_ms=_ms(started),
                detail={**(entry.detail or {}), "error": type(exc).__name__},
            )
            with suppress(GatewayError):
                await self.audit.append(failure)
            timer.finish(_span_attributes(failure), error_type="internal_error")
            raise
        timer.finish(_span_attributes(entry), error_type=None, arguments=arguments)
        return result

    def _granted(self, principal: Principal) -> tuple[types.Tool, ...]:
        """Tools shown because of an active break-glass grant, beyond what the policy shows."""
        if self.breakglass is None or principal.catalog not in self.settings.breakglass.catalogs:
            return ()
        granted = self.breakglass.granted_tools(principal.subject, principal.catalog)
        if not granted:
            return ()
        shown = {tool.name for tool in self.visible_tools(principal)}
        return tuple(
            tool.definition
            for tool in self._catalogs.tools(principal.catalog)
            if tool.name in granted and tool.name not in shown
        )

    def _grant_for(self, principal: Principal, name: str) -> str | None:
        if self.breakglass is None or principal.catalog not in self.settings.breakglass.catalogs:
            return None
        return self.breakglass.active_grant(principal.subject, principal.catalog, name)

    def _scan_arguments(
        self, tool: ToolSpec, arguments: Mapping[str, Any], entry: AuditEntry
    ) -> tuple[Mapping[str, Any], AuditEntry]:
        found = dlp.scan(arguments, "arguments")
        if not found:
            return arguments, entry
        entry = _with_findings(entry, tool.dlp, found)
        if tool.dlp == "block":
            raise DlpBlockedError(
                f"arguments: {_rules(found)}",
                public_detail=f"{_rules(found)} in {_paths(found, 'arguments')}",
                audit_detail=entry.detail,
            )
        if tool.dlp == "flag":
            return arguments, entry
        redacted = dlp.redact(arguments)
        # Redaction must not smuggle arguments past the schema the backend relies on.
        if next(iter(tool.validator.iter_errors(redacted)), None) is not None:
            raise DlpBlockedError(
                f"arguments: {_rules(found)}; redacted arguments no longer match the schema",
                public_detail=f"{_rules(found)} in {_paths(found, 'arguments')}",
                audit_detail=entry.detail,
            )
        return redacted, replace(entry, detail={**(entry.detail or {}), "forwarded_digest": _digest(redacted)})

    def _scan_result(
        self, tool: ToolSpec, result: types.CallToolResult, entry: AuditEntry
    ) -> tuple[types.CallToolResult, AuditEntry]:
        texts = [block.text for block in result.content if isinstance(block, types.TextContent)]
        found = dlp.scan({"content": texts, "structured": result.structured_content}, "result")
        if not found:
            return result, entry
        entry = _with_findings(entry, tool.dlp, found)
        if tool.dlp == "block":
            raise DlpBlockedError(
                f"result: {_rules(found)}", public_detail=f"{_rules(found)} in the result", audit_detail=entry.detail
            )
        if tool.dlp == "flag":
            return result, entry
        content = [
            types.TextContent(text=dlp.redact(block.text)) if isinstance(block, types.TextContent) else block
            for block in result.content
        ]
        structured = dlp.redact(result.structured_content) if result.structured_content is not None else None
        return result.model_copy(update={"content": content, "structured_content": structured}), entry

    async def _refuse(
        self, entry: AuditEntry, exc: GatewayError, started: float, request_id: str, timer: CallTimer, *, opened: bool
    ) -> types.CallToolResult:
        outcome = replace(
            entry,
            # The outcome of a call whose decision row is on record; otherwise the refusal is the decision.
            event=RESULT if opened else CALL,
            outcome=exc.code,
            latency_ms=_ms(started),
            detail={**(entry.detail or {}), **getattr(exc, "audit_detail", {}), "error": str(exc)},
        )
        try:
            await self.audit.append(outcome)
        except CallError as audit_exc:
            logger.error("audit unavailable; refusing request %s: %s", request_id, audit_exc)
            timer.finish(_span_attributes(outcome), error_type=audit_exc.code)
            return to_call_result(audit_exc, request_id)
        timer.finish(_span_attributes(outcome), error_type=exc.code)
        if isinstance(exc, RequestError):
            raise to_mcp_error(exc, request_id) from exc
        assert isinstance(exc, CallError)  # noqa: S101 - the tree has exactly these two kinds of refusal
        return to_call_result(exc, request_id)

    def _check_arguments(self, tool: ToolSpec, arguments: Mapping[str, Any]) -> bytes:
        # Depth first, iteratively: json.dumps recurses and would hit the interpreter's limit on hostile nesting.
        depth_limit = self.settings.max_argument_depth
        if _depth(arguments, depth_limit) > depth_limit:
            raise InvalidArgumentsError(
                f"arguments nest deeper than {depth_limit}", public_detail=f"nested deeper than {depth_limit}"
            )
        canonical = _canonical_arguments(arguments)
        limit = self.settings.max_argument_bytes
        if len(canonical) > limit:
            raise InvalidArgumentsError(
                f"arguments are {len(canonical)} bytes, over {limit}", public_detail=f"larger than {limit} bytes"
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
        def record(result: ReloadResult) -> None:
            detail = {"added": list(result.added), "removed": list(result.removed), "error": result.error}
            self._audit_change(
                "policy.reload", actor, result.ok, old=result.old_version, new=result.new_version, detail=detail
            )

        result = self.policy.reload(record)
        if not result.changed:
            return False, None
        return result.ok, None if result.ok else f"policy: {result.error}"

    def _reload_catalogs(self, actor: str) -> tuple[bool, str | None]:
        # The fingerprint is remembered, and the new catalogs swapped in, only after the audit row is committed:
        # if it cannot be, nothing changes and the next check tries again.
        fingerprint = catalog_fingerprint(self.settings.catalogs_dir)
        if fingerprint == self._catalog_files:
            return False, None
        old = self._catalogs
        try:
            fresh = load_catalogs(self.settings.catalogs_dir, self.settings.egress)
        except ConfigError as exc:
            self._audit_change("catalog.reload", actor, False, old=old.version, new=None, detail={"error": str(exc)})
            self._catalog_files = fingerprint
            return False, f"catalogs: {exc}"
        if fresh.version != old.version:
            diff = _catalog_diff(old, fresh)
            self._audit_change("catalog.reload", actor, True, old=old.version, new=fresh.version, detail=diff)
            self._catalogs = fresh
        self._catalog_files = fingerprint
        return fresh.version != old.version, None

    def _audit_change(
        self, event: str, actor: str, ok: bool, *, old: str, new: str | None, detail: dict[str, Any]
    ) -> None:
        # A change is not part of any request: it gets a trace of its own, so its row has a trace id too.
        with tracer.start_as_current_span(event, attributes={"mcp_gateway.actor": actor}):
            self._record_change(event, actor, ok, old=old, new=new, detail=detail)

    def _record_change(
        self, event: str, actor: str, ok: bool, *, old: str, new: str | None, detail: dict[str, Any]
    ) -> None:
        self.audit.record(
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


def _span_attributes(entry: AuditEntry) -> dict[str, Any]:
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


def _backend(tool: ToolSpec) -> dict[str, Any]:
    """What the audit trail says about the backend request: the template or model, never a filled-in URL or a secret."""
    backend = tool.backend
    if isinstance(backend, ModelBackend):
        return {"type": "model", "model": backend.model, "operation": backend.operation}
    return {"type": "http", "method": backend.method, "url": backend.url}


_MAX_FINDINGS = 32  # per audit row; the count says how many there were


def _with_findings(entry: AuditEntry, action: str, found: list[dlp.Finding]) -> AuditEntry:
    """Record rule ids and paths (never matched values) in the row's detail."""
    unique = list(dict.fromkeys(found))
    detail = dict(entry.detail or {})
    records = [*detail.get("dlp", []), *(finding.as_record() for finding in unique[:_MAX_FINDINGS])]
    detail.update(dlp=records, dlp_action=action, dlp_count=detail.get("dlp_count", 0) + len(unique))
    return replace(entry, detail=detail)


def _rules(found: list[dlp.Finding]) -> str:
    return ", ".join(dict.fromkeys(finding.rule for finding in found))


def _paths(found: list[dlp.Finding], root: str) -> str:
    return ", ".join(dict.fromkeys(finding.path for finding in found))[:200] or root


def _digest(value: Any) -> str:
    return hashlib.sha256(_canonical_arguments(value)).hexdigest()


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
