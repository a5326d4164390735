"""The gateway's one error tree, and its mapping to MCP.

Every refusal the gateway makes is one of these. Each class carries its wire mapping as class data:
a stable machine-readable ``code``, the ``public_message`` the caller sees, and how it travels.

* GatewayError             CLI exit status 1 unless a subclass says otherwise
  * ConfigError              start-up and CLI; exit status 2 (a bad setting, file or option)
  * RequestError             -> JSON-RPC error response (``MCPError``)
    x UnauthenticatedError   no valid token (stdio; HTTP refuses with 401 before MCP)
    x UnknownToolError       INVALID_PARAMS; also for tools the caller may not call
  * CallError                -> ``CallToolResult(is_error=True)`` with structured content
    x InvalidArgumentsError  arguments too large, too deep or not matching the tool's schema
    x RateLimitedError       the caller's bucket for this tool is empty; carries ``retry_after`` seconds
    x DlpBlockedError        arguments or result carry data the tool's DLP action blocks
    x ApprovalRequiredError  the tool needs a second person's approval of this exact call; carries its id
    x UpstreamError          the in-boundary backend failed, timed out or answered too much
      x UpstreamTimeoutError      it had the call's connection and did not answer in time (audit: timeout)
      x UpstreamPoolTimeoutError  the deadline passed while the call waited for a connection (audit: pool_timeout)
      x ModelEndpointError   a model endpoint failed, timed out or answered garbage: counts against its breaker
    x UnavailableError       the gateway cannot establish policy or audit: fail closed
      x ModelUnavailableError  every approved model for the tool is down or failed (same code)
  * BreakGlassError          a break-glass or approval command refused (CLI; exit status 1)
  * ForbiddenError           an operator's verified token lacks the role a command needs (CLI; exit status 1)

The caller sees only ``public_message``, the ``code`` and the request id. The detailed ``str(exc)`` goes
to the audit trail and the span, never to the caller. On the command line it is the other way round: the
operator sees ``str(exc)``, and the process exits with the class's ``exit_code`` (as click's exceptions carry
theirs), mapped once by the root command group in ``mcp_gateway.cli.common``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import mcp_types as types
from mcp.shared.exceptions import MCPError

__all__ = [
    "ApprovalRequiredError",
    "BreakGlassError",
    "CallError",
    "ConfigError",
    "DlpBlockedError",
    "ForbiddenError",
    "GatewayError",
    "InvalidArgumentsError",
    "ModelEndpointError",
    "ModelUnavailableError",
    "RateLimitedError",
    "RequestError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnknownToolError",
    "UpstreamError",
    "UpstreamPoolTimeoutError",
    "UpstreamTimeoutError",
    "to_call_result",
    "to_mcp_error",
]

# JSON-RPC reserves -32000..-32099 for implementation-defined server errors.
UNAUTHENTICATED = -32001


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    code: ClassVar[str] = "gateway_error"
    public_message: ClassVar[str] = "Request failed"
    # How the error travels when it must be a JSON-RPC error (always for RequestError; for a CallError only
    # where the method has no tool result to carry it, such as tools/list).
    jsonrpc_code: ClassVar[int] = types.INTERNAL_ERROR
    # The status a command exits with when this error ends it.
    exit_code: ClassVar[int] = 1

    def public_data(self) -> dict[str, Any]:
        """Machine-readable fields the caller may see besides ``code`` and the message (none by default)."""
        return {}


class ConfigError(GatewayError):
    """The configuration, a catalog or a policy is invalid; names the key and why."""

    code: ClassVar[str] = "config_error"
    public_message: ClassVar[str] = "Invalid configuration"
    # As click's UsageError: the command cannot run as configured or as given.
    exit_code: ClassVar[int] = 2


class RequestError(GatewayError):
    """Refused as a JSON-RPC error: the request itself is not acceptable."""


class UnauthenticatedError(RequestError):
    """No valid token; ``reason`` names the class of failure for the operator (``expired``, ``wrong audience``...)."""

    code: ClassVar[str] = "unauthenticated"
    public_message: ClassVar[str] = "Authentication required: no valid token"
    jsonrpc_code: ClassVar[int] = UNAUTHENTICATED

    def __init__(self, detail: str, *, reason: str = "invalid") -> None:
        super().__init__(detail)
        self.reason = reason


class UnknownToolError(RequestError):
    """Raised for unknown tools and, identically, for tools the caller may not call."""

    code: ClassVar[str] = "unknown_tool"
    public_message: ClassVar[str] = "Unknown tool"
    jsonrpc_code: ClassVar[int] = types.INVALID_PARAMS


class CallError(GatewayError):
    """Refused or failed as a tool-level error result (``isError``).

    ``public_detail`` is what the caller may see beyond ``public_message`` (an argument path, a DLP rule id):
    never a value, never an internal.
    """

    def __init__(self, detail: str, *, public_detail: str | None = None) -> None:
        super().__init__(detail)
        self.public_detail = public_detail


class InvalidArgumentsError(CallError):
    code: ClassVar[str] = "invalid_arguments"
    # Schema errors name the argument path in public_detail: the schema is the caller's own view.
    public_message: ClassVar[str] = "Arguments rejected"


class RateLimitedError(CallError):
    """The caller's token bucket for this tool is empty; ``retry_after`` says when the next call may pass."""

    code: ClassVar[str] = "rate_limited"
    public_message: ClassVar[str] = "Rate limit exceeded"

    def __init__(self, detail: str, *, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def public_data(self) -> dict[str, Any]:
        # Whole seconds, rounded up: a client that waits this long is admitted.
        return {"retry_after": max(1, math.ceil(self.retry_after))}


class DlpBlockedError(CallError):
    """Sensitive data found where the tool's DLP action is ``block``; the message names rules, never values."""

    code: ClassVar[str] = "dlp_blocked"
    public_message: ClassVar[str] = "Sensitive data blocked"

    def __init__(
        self, detail: str, *, public_detail: str | None = None, audit_detail: dict[str, Any] | None = None
    ) -> None:
        super().__init__(detail, public_detail=public_detail)
        # Rule ids and paths for the audit row (never matched values).
        self.audit_detail = audit_detail or {}


class ApprovalRequiredError(CallError):
    """The tool needs a second person to approve this exact call; retry it once ``approval_id`` is approved."""

    code: ClassVar[str] = "approval_required"
    public_message: ClassVar[str] = "This call needs approval by a second person"

    def __init__(self, detail: str, *, approval_id: str) -> None:
        super().__init__(detail)
        self.approval_id = approval_id

    def public_data(self) -> dict[str, Any]:
        return {"approval_id": self.approval_id}


class UpstreamError(CallError):
    code: ClassVar[str] = "upstream_failed"
    public_message: ClassVar[str] = "The tool's backend failed"


class UpstreamTimeoutError(UpstreamError):
    """The backend had the call's request and did not answer within the deadline; ``waited`` is how much of the
    deadline went on waiting for a free connection first (``egress.pool_size``)."""

    def __init__(self, detail: str, *, waited: float = 0.0) -> None:
        super().__init__(detail)
        self.waited = waited
        self.audit_detail = {"upstream": "timeout", "pool_wait_ms": round(waited * 1000, 1)}


class UpstreamPoolTimeoutError(UpstreamError):
    """The deadline passed while the call waited for a free connection to its backend (``egress.pool_size``): the
    backend never saw it. The caller sees the same code as any backend failure; the audit row tells them apart."""

    def __init__(self, detail: str, *, waited: float) -> None:
        super().__init__(detail)
        self.waited = waited
        self.audit_detail = {"upstream": "pool_timeout", "pool_wait_ms": round(waited * 1000, 1)}


class ModelEndpointError(UpstreamError):
    """A model endpoint is down or broken (timeout, connection, 5xx, malformed answer): try the fallback."""


class UnavailableError(CallError):
    code: ClassVar[str] = "unavailable"
    public_message: ClassVar[str] = "The gateway cannot process calls right now"


class BreakGlassError(GatewayError):
    """A break-glass or call-approval command was refused: no MFA, self-approval, no approver role, expired."""

    code: ClassVar[str] = "breakglass_refused"
    public_message: ClassVar[str] = "Break-glass request refused"
    exit_code: ClassVar[int] = 1


class ForbiddenError(GatewayError):
    """A verified operator holds none of the roles an action needs; the message names the action and those roles."""

    code: ClassVar[str] = "forbidden"
    public_message: ClassVar[str] = "Not allowed for this operator"
    exit_code: ClassVar[int] = 1


class ModelUnavailableError(UnavailableError):
    """No approved model (the tool's own or a fallback) could answer: each was down or failed."""

    public_message: ClassVar[str] = "No approved model is available for this tool right now"


def _public_text(exc: GatewayError) -> str:
    detail = getattr(exc, "public_detail", None)
    return f"{exc.public_message}: {detail}" if detail else exc.public_message


def to_mcp_error(exc: GatewayError, request_id: str) -> MCPError:
    """Map a refusal to the JSON-RPC error the caller receives."""
    return MCPError(exc.jsonrpc_code, _public_text(exc), {"code": exc.code, "request_id": request_id})


def to_call_result(exc: CallError, request_id: str) -> types.CallToolResult:
    """Map a call-level failure to an ``isError`` tool result with a stable, machine-readable body."""
    body: dict[str, Any] = {"code": exc.code, "message": _public_text(exc), "request_id": request_id}
    body.update(exc.public_data())
    return types.CallToolResult(
        content=[types.TextContent(text=f"{body['message']} [{exc.code}; request {request_id}]")],
        structured_content={"error": body},
        is_error=True,
    )
