"""Raw JSON-RPC bytes, checked before the SDK parses them: one message has exactly one reading.

The SDK parses with pydantic, which keeps the last of two members with the same name, as Python's ``json``
does. The gateway would be consistent with itself, but a backend or log reader that parses the same bytes
differently (first wins, or both) is a parser differential, so a message naming a member twice anywhere is
refused before it reaches the SDK or the gateway: INVALID_PARAMS when the duplicate is inside ``params``,
INVALID_REQUEST otherwise (with ``id`` null when ``id`` itself is the duplicate). A message this stricter parser
cannot read at all is refused as a parse error rather than handed on, so that no message reaches the SDK
unchecked. ``StrictJsonGuard`` applies the check to HTTP bodies; ``stdio`` applies it to each line.

``ProtocolVersionGuard`` refuses an ``MCP-Protocol-Version`` header naming no version the SDK speaks, saying so:
the SDK would take it for a 2026-07-28 request and complain about a missing ``params._meta`` envelope instead.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import mcp_types as types
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import KNOWN_PROTOCOL_VERSIONS
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DUPLICATE_KEY", "ProtocolVersionGuard", "StrictJsonGuard", "refusal", "version_refusal"]

logger = logging.getLogger(__name__)

DUPLICATE_KEY = "duplicate_key"
NOT_JSON = "parse_error"


class _DuplicateKeyError(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateKeyError
    return result


def refusal(raw: str | bytes) -> types.JSONRPCError | None:
    """The error answering ``raw`` if it names a member twice or is not JSON; None if it may be handed on."""
    try:
        json.loads(raw, object_pairs_hook=_unique)
    except _DuplicateKeyError:
        return _duplicate_refusal(raw)
    except (ValueError, RecursionError):
        return _error(None, types.PARSE_ERROR, "Parse error: the message is not JSON", NOT_JSON)
    return None


def _duplicate_refusal(raw: str | bytes) -> types.JSONRPCError:
    # Only on the refusal path: read every object as its list of (name, value) members, to answer with the
    # request's id. JSON arrays come back as lists of non-tuples, so the tuples mark objects unambiguously.
    top = json.loads(raw, object_pairs_hook=list)
    names = [item[0] for item in top if isinstance(item, tuple)] if isinstance(top, list) else []
    if not names or len(set(names)) != len(names):
        # The duplicate is a member of the message itself (id, method, params, ...): its id cannot be trusted.
        return _error(None, types.INVALID_REQUEST, "Invalid request: duplicate key in the message", DUPLICATE_KEY)
    members = dict(top)
    request_id = members.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        request_id = None
    if "method" in members and _has_duplicate(members.get("params")):
        return _error(request_id, types.INVALID_PARAMS, "Invalid params: duplicate key in a JSON object", DUPLICATE_KEY)
    return _error(request_id, types.INVALID_REQUEST, "Invalid request: duplicate key in a JSON object", DUPLICATE_KEY)


def _has_duplicate(value: Any) -> bool:
    """Whether an object inside ``value`` (as ``json.loads(..., object_pairs_hook=list)`` reads it) names a
    member twice; walked without recursion, so nesting as deep as the parser allows cannot overflow the stack."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, tuple):
            pending.append(item[1])
        elif isinstance(item, list):
            names = [member[0] for member in item if isinstance(member, tuple)]
            if len(set(names)) != len(names):
                return True
            pending.extend(item)
    return False


def _error(request_id: types.RequestId | None, code: int, message: str, reason: str) -> types.JSONRPCError:
    return types.JSONRPCError(
        jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message, data={"code": reason})
    )


class StrictJsonGuard:
    """Refuse (400, with the JSON-RPC error as body) a POST body that names a member twice or is not JSON.

    Sits behind authentication and behind the SDK's body size limit, which it re-applies so that the whole body
    it buffers is bounded however it is mounted.
    """

    def __init__(self, app: ASGIApp, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before its body was complete: nothing to answer
            body += message.get("body", b"")
            if len(body) > self.max_body_size:
                await Response("Request body too large", status_code=413)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        error = refusal(bytes(body))
        if error is not None:
            logger.warning("refused an HTTP message before parsing: %s", error.error.message)
            content = error.model_dump_json(by_alias=True, exclude_unset=True)
            await Response(content, status_code=400, media_type="application/json")(scope, receive, send)
            return
        replay: list[Message] = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


def version_refusal(versions: list[str]) -> types.JSONRPCError | None:
    """The error answering a request's ``MCP-Protocol-Version`` values; None if they name one known version."""
    if not versions or (len(set(versions)) == 1 and versions[0] in KNOWN_PROTOCOL_VERSIONS):
        return None
    # Several differing headers are refused too: which one the SDK would read is not ours to guess.
    requested = versions[0] if len(set(versions)) == 1 else ", ".join(sorted(set(versions)))
    shown = requested if len(requested) <= 64 and requested.isprintable() else ascii(requested[:61]) + "..."
    supported = list(KNOWN_PROTOCOL_VERSIONS)
    message = f"Unsupported MCP-Protocol-Version {shown!r}; supported: {', '.join(supported)}"
    data = types.UnsupportedProtocolVersionErrorData(supported=supported, requested=shown).model_dump(mode="json")
    return types.JSONRPCError(
        jsonrpc="2.0",
        id=None,
        error=types.ErrorData(code=types.UNSUPPORTED_PROTOCOL_VERSION, message=message, data=data),
    )


class ProtocolVersionGuard:
    """Refuse (400, with the JSON-RPC error as body) a request whose ``MCP-Protocol-Version`` names no known version."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = MCP_PROTOCOL_VERSION_HEADER.lower().encode("ascii")
            versions = [value.decode("latin-1") for name, value in scope["headers"] if name == header]
            error = version_refusal(versions)
            if error is not None:
                content = error.model_dump_json(by_alias=True, exclude_unset=True)
                await Response(content, status_code=400, media_type="application/json")(scope, receive, send)
                return
        await self.app(scope, receive, send)
