"""Federated tools: a call goes to its upstream MCP server over the one shared session to that server.

The upstream gets the (validated, scanned) arguments, the server-side credential its session was opened
with, a ``traceparent`` and a progress token of the gateway's own (the SDK's per-request token): never the
caller's token or ``_meta``. Its result is refused when larger than ``max_response_bytes`` or, for a tool that
declares an ``outputSchema``, when its ``structuredContent`` does not match the pinned schema; the gateway's
pipeline then scans it with DLP like any other result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jsonschema
import mcp_types as types
from mcp.shared.dispatcher import ProgressFnT
from pydantic import ValidationError

from mcp_gateway.backends import Answer, BackendCall, ProgressFn
from mcp_gateway.canonical import canonical_json
from mcp_gateway.catalog import ToolSpec, UpstreamToolBackend
from mcp_gateway.errors import UnknownToolError, UpstreamError

if TYPE_CHECKING:
    from mcp_gateway.federation.registry import Federation

__all__ = ["UpstreamBackend"]


def _spec(tool: ToolSpec) -> UpstreamToolBackend:
    if not isinstance(tool.backend, UpstreamToolBackend):
        raise UnknownToolError(f"{tool.name} is not a federated tool")
    return tool.backend


class UpstreamBackend:
    """The backend of every federated tool; it owns no connection (the federation's sessions are shared)."""

    def __init__(self, federation: Federation) -> None:
        self._federation = federation

    async def call(self, tool: ToolSpec, arguments: Mapping[str, Any], call: BackendCall) -> Answer:
        backend = _spec(tool)
        session = self._federation.session(tool.catalog, backend.server)
        if session is None:
            raise UpstreamError(f"upstream {backend.server} of {tool.catalog} is not configured")
        raw = await session.call(backend.tool, arguments, _relay(call.progress))
        size = len(canonical_json(raw))
        if size > session.spec.max_response_bytes:
            raise UpstreamError(f"upstream {backend.server}: result is {size} bytes, over max_response_bytes")
        try:
            result = types.CallToolResult.model_validate(raw)
        except ValidationError as exc:
            raise UpstreamError(
                f"upstream {backend.server}: not a tools/call result: {exc.error_count()} errors"
            ) from exc
        if backend.output_schema is not None and not result.is_error:
            _check_output(backend, result)
        return Answer(result, {"upstream": backend.server, "upstream_bytes": size})

    def describe(self, tool: ToolSpec) -> dict[str, Any]:
        backend = _spec(tool)
        return {"type": "upstream", "server": backend.server, "tool": backend.tool, "pinned": backend.pinned_digest}

    async def aclose(self) -> None:
        await self._federation.aclose()


def _relay(progress: ProgressFn | None) -> ProgressFnT | None:
    """Progress from the upstream, sent on to the caller (only when the caller asked for progress)."""
    if progress is None:
        return None
    send = progress

    async def relay(progress: float, total: float | None, message: str | None) -> None:
        await send(progress, total, message)

    return relay


def _check_output(backend: UpstreamToolBackend, result: types.CallToolResult) -> None:
    """A tool that declares an output schema must return matching ``structuredContent``."""
    assert backend.output_schema is not None  # noqa: S101 - checked by the caller
    if result.structured_content is None:
        raise UpstreamError(f"upstream {backend.server}.{backend.tool}: no structuredContent for its outputSchema")
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(backend.output_schema).iter_errors(result.structured_content)
    )
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        raise UpstreamError(f"upstream {backend.server}.{backend.tool}: result does not match outputSchema at {where}")
