"""Backends: turn an authorised tool call into a request to an in-boundary API.

Only server-side credentials travel upstream. Nothing of the caller's token is forwarded (no token
passthrough), headers are never filled from arguments, and path arguments are percent-encoded as one
segment each, so arguments cannot rewrite the request's target.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import mcp_types as types
from opentelemetry.trace import Span, SpanKind

from mcp_gateway.backends import Answer, BackendCall
from mcp_gateway.catalog import HttpBackend, ToolSpec
from mcp_gateway.config import EgressSettings
from mcp_gateway.egress import EgressDeniedError, guarded_async_client
from mcp_gateway.errors import (
    GatewayError,
    InvalidArgumentsError,
    UnavailableError,
    UpstreamError,
    UpstreamPoolTimeoutError,
    UpstreamTimeoutError,
)
from mcp_gateway.telemetry import POOL_TIMEOUTS, POOL_WAIT, fail_span, inject_traceparent, tracer

__all__ = ["REQUEST_ID_HEADER", "HttpUpstream", "PoolProbe", "map_upstream_errors", "parse_answer"]

REQUEST_ID_HEADER = "X-Request-Id"
ATTR_POOL_WAIT = "mcp_gateway.upstream.pool_wait_ms"
_SCALARS = (str, int, float, bool)
_UNSAFE_SEGMENT = re.compile(r"[/\\\x00-\x1f\x7f]")


def _text(value: str | int | float | bool) -> str:
    # JSON spelling for booleans, whether alone or inside a list.
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _segment(name: str, value: Any) -> str:
    if not isinstance(value, _SCALARS):
        raise InvalidArgumentsError(f"path argument {name!r} is not a scalar", public_detail=f"{name}: not a scalar")
    text = _text(value)
    # Percent-encoding keeps "/" inside one segment only for backends that route on the raw path; many
    # frameworks and proxies decode %2F first. Refuse separators and dot segments outright.
    if text in ("", ".", "..") or _UNSAFE_SEGMENT.search(text):
        raise InvalidArgumentsError(f"path argument {name!r} is {text!r}", public_detail=f"{name}: not a path segment")
    return quote(text, safe="")


def _query_value(name: str, value: Any) -> str | list[str]:
    if isinstance(value, list) and all(isinstance(item, _SCALARS) for item in value):
        return [_text(item) for item in value]
    if isinstance(value, _SCALARS):
        return _text(value)
    raise InvalidArgumentsError(f"query argument {name!r} is not a scalar", public_detail=f"{name}: not a scalar")


def _credential(backend: HttpBackend) -> str | None:
    if backend.credential_env:
        secret = os.environ.get(backend.credential_env)
        if not secret:
            raise UnavailableError(f"credential_env {backend.credential_env} is not set")
        return secret
    if backend.credential_file:
        try:
            return backend.credential_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UnavailableError(f"credential_file {backend.credential_file} unreadable: {exc.strerror}") from exc
    return None


class PoolProbe:
    """When a request got its connection: the pool calls its ``trace`` hook (an ``httpx`` request extension) first
    when it opens a connection for the request or starts writing on a reused one, so up to then it was waiting."""

    __slots__ = ("connected", "started")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.connected: float | None = None

    async def __call__(self, event: str, info: Mapping[str, Any]) -> None:
        if self.connected is None:
            self.connected = time.perf_counter()
            POOL_WAIT.record(self.connected - self.started)

    def waited(self) -> float:
        return (self.connected or time.perf_counter()) - self.started


@contextmanager
def map_upstream_errors(tool: str, probe: PoolProbe | None = None) -> Iterator[None]:
    """Translate transport failures into ``UpstreamError`` at this one edge; a timeout is told apart by whether the
    request had its connection (``probe``) or was still waiting for one."""
    try:
        yield
    except EgressDeniedError as exc:
        raise UpstreamError(f"{tool}: {exc}") from exc
    except (httpx.TimeoutException, TimeoutError) as exc:
        waited = probe.waited() if probe is not None else 0.0
        if isinstance(exc, httpx.PoolTimeout) or (probe is not None and probe.connected is None):
            POOL_TIMEOUTS.add(1)
            message = f"{tool}: no connection to the backend was free within the deadline ({waited:.3f} s waited)"
            raise UpstreamPoolTimeoutError(message, waited=waited) from exc
        message = f"{tool}: upstream timed out ({type(exc).__name__}; {waited:.3f} s of it waiting for a connection)"
        raise UpstreamTimeoutError(message, waited=waited) from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(f"{tool}: {type(exc).__name__}: {exc}") from exc


class HttpUpstream:
    """Calls REST backends through one guarded, reused HTTP client."""

    def __init__(self, egress: EgressSettings) -> None:
        self._client = guarded_async_client(egress)

    async def aclose(self) -> None:
        await self._client.aclose()

    def build_request(self, tool: ToolSpec, arguments: Mapping[str, Any], request_id: str) -> httpx.Request:
        backend = _http_backend(tool)
        url = backend.url
        for name in backend.path_arguments:
            if name not in arguments:
                raise InvalidArgumentsError(f"path argument {name!r} missing", public_detail=f"{name}: required")
            url = url.replace("{" + name + "}", _segment(name, arguments[name]))
        params = {key: _query_value(arg, arguments[arg]) for key, arg in backend.query.items() if arg in arguments}
        headers = dict(backend.headers)
        headers[REQUEST_ID_HEADER] = request_id
        # An uncompressed answer keeps the size cap honest: a small gzip body can inflate a hundredfold
        # inside one decoded chunk before the cap sees it. A compressed answer anyway is refused below.
        headers["Accept-Encoding"] = "identity"
        secret = _credential(backend)
        if secret is not None:
            headers[backend.credential_header] = f"{backend.credential_scheme} {secret}".strip()
        body = {key: arguments[arg] for key, arg in backend.body.items() if arg in arguments}
        content = json.dumps(body, allow_nan=False).encode() if backend.body else None
        if content is not None:
            headers["Content-Type"] = "application/json"
        return self._client.build_request(backend.method, url, params=params, headers=headers, content=content)

    def describe(self, tool: ToolSpec) -> dict[str, Any]:
        backend = _http_backend(tool)
        return {"type": "http", "method": backend.method, "url": backend.url}

    async def call(self, tool: ToolSpec, arguments: Mapping[str, Any], call: BackendCall) -> Answer:
        """Make the tool's request and turn the answer into a tool result.

        Raises:
            InvalidArgumentsError: an argument cannot be placed in the request.
            UnavailableError: the backend's credential is not configured.
            UpstreamError: the backend failed, timed out (total deadline), answered an error status, or sent
                more than ``max_response_bytes``.
        """
        backend = _http_backend(tool)
        request = self.build_request(tool, arguments, call.request_id)
        # A CLIENT child span where the time goes; its name and attributes carry the URL template, never the
        # filled-in URL (path and query hold arguments).
        attributes: dict[str, str | int] = {
            "http.request.method": backend.method,
            "server.address": request.url.host,
            "server.port": request.url.port or (443 if request.url.scheme == "https" else 80),
            "url.template": backend.url,
        }
        with tracer.start_as_current_span(
            f"{backend.method} {backend.url}", kind=SpanKind.CLIENT, attributes=attributes, record_exception=False
        ) as span:
            inject_traceparent(request.headers)
            try:
                return Answer(await self._send(tool, request, span))
            except GatewayError as exc:
                fail_span(span, exc.code)
                raise

    async def _send(self, tool: ToolSpec, request: httpx.Request, span: Span) -> types.CallToolResult:
        backend = _http_backend(tool)
        body = bytearray()
        probe = PoolProbe()
        request.extensions["trace"] = probe
        with map_upstream_errors(tool.name, probe):
            # A total deadline: httpx's timeouts are per operation, so a server dripping bytes could hold the call.
            # It includes any wait for a free connection (egress.pool_size), which the probe tells apart.
            with anyio.fail_after(backend.timeout):
                response = await self._client.send(request, stream=True)
                span.set_attribute(ATTR_POOL_WAIT, round(probe.waited() * 1000, 3))
                try:
                    encoding = response.headers.get("content-encoding", "identity").strip().lower()
                    if encoding != "identity":
                        raise UpstreamError(f"{tool.name}: upstream sent Content-Encoding {encoding!r}, asked identity")
                    async for chunk in response.aiter_raw():
                        body += chunk
                        if len(body) > backend.max_response_bytes:
                            raise UpstreamError(f"{tool.name}: response exceeds {backend.max_response_bytes} bytes")
                finally:
                    await response.aclose()
        span.set_attribute("http.response.status_code", response.status_code)
        if not response.is_success:
            # 3xx included: redirects are never followed, and a redirect's body is not the tool's answer.
            raise UpstreamError(f"{tool.name}: upstream answered HTTP {response.status_code}")
        return parse_answer(tool.name, response, bytes(body))


def _http_backend(tool: ToolSpec) -> HttpBackend:
    if not isinstance(tool.backend, HttpBackend):
        raise TypeError(f"{tool.name} is not a REST tool")
    return tool.backend


def parse_answer(tool: str, response: httpx.Response, body: bytes) -> types.CallToolResult:
    """Turn a REST answer into a tool result: the text always, structured content when the body is JSON.

    Raises:
        UpstreamError: the body is not text in its declared encoding, or declared JSON that does not parse.
    """
    try:
        text = body.decode(response.encoding or "utf-8")
    except (UnicodeDecodeError, LookupError) as exc:
        raise UpstreamError(f"{tool}: response is not text: {exc}") from exc
    structured: dict[str, Any] | None = None
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UpstreamError(f"{tool}: upstream sent invalid JSON: {exc.msg}") from exc
        except (ValueError, RecursionError) as exc:  # integers past the digit limit, nesting past the stack
            raise UpstreamError(f"{tool}: upstream sent unparseable JSON: {type(exc).__name__}") from exc
        structured = parsed if isinstance(parsed, dict) else {"result": parsed}
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured)
