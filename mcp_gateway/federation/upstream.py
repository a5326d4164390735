"""One session per upstream MCP server per gateway process, kept up by its own task and shared by every call.

The task connects (stdio: the catalog's argv under ``env -i``, so the server gets exactly the catalog's
environment and ``PATH``; HTTP: through the egress guard, with the server-side credential as the only
``Authorization``), lists the tools as raw JSON, and re-lists them every ``refresh`` seconds and whenever the
server says ``notifications/tools/list_changed``. When the connection ends (a stdio server exits, an HTTP
session expires) every call in flight fails with ``upstream_failed`` and the task reconnects with backoff.
Requests the server makes of the gateway (sampling, elicitation, roots) are refused and reported.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol, TextIO

import anyio
import httpx2
import mcp_types as types
from mcp.client.session import ClientRequestContext, ClientSession, IncomingMessage
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ConfigDict

from mcp_gateway import __version__
from mcp_gateway.catalog import ServerSpec
from mcp_gateway.config import EgressSettings
from mcp_gateway.egress import guarded_httpx2_client
from mcp_gateway.errors import UnavailableError, UpstreamError, UpstreamTimeoutError

__all__ = ["Listener", "Raw", "UpstreamSession", "child_argv", "server_credential"]

logger = logging.getLogger(__name__)


class Raw(BaseModel):
    """A result as the JSON object that came over the wire (every member kept): the SDK's own models drop fields
    they do not know, and a pin must cover those too."""

    model_config = ConfigDict(extra="allow")

    def wire(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


_BACKOFF_FIRST, _BACKOFF_MAX = 0.2, 30.0
_CLIENT = types.Implementation(name="mcp-gateway", version=__version__)
_STABLE = 10.0  # seconds up after which a failure starts the backoff again from its first step
# An HTTP 404 on a known session id: the SDK's own error, or the server's JSON-RPC body (the SDK's server says
# "Session not found"). The server never saw the request, so it is sent once more on a new session.
_SESSION_GONE = ("session terminated", "session not found")


class Listener(Protocol):
    """What a session reports to the federation."""

    async def tools_changed(self, session: UpstreamSession) -> None: ...

    async def refused(self, session: UpstreamSession, method: str) -> None: ...


def child_argv(spec: ServerSpec) -> list[str]:
    """The argv that starts a stdio server with exactly the catalog's environment (plus ``PATH``): ``env -i``,
    because the SDK's ``stdio_client`` merges HOME, USER, SHELL, TERM and more into whatever it is given."""
    assert spec.command is not None  # noqa: S101 - ServerSpec requires it for stdio
    environment = {"PATH": os.environ.get("PATH", os.defpath), **spec.env}
    program = shutil.which(spec.command[0], path=environment["PATH"]) or spec.command[0]
    env_program = shutil.which("env") or "/usr/bin/env"
    return [
        env_program,
        "-i",
        *(f"{key}={value}" for key, value in sorted(environment.items())),
        program,
        *spec.command[1:],
    ]


def server_credential(spec: ServerSpec) -> str | None:
    """The server-side secret for an HTTP upstream, read when a session opens (a rotated secret takes effect then).

    Raises:
        UnavailableError: the variable is unset or the file unreadable.
    """
    if spec.credential_env:
        secret = os.environ.get(spec.credential_env)
        if not secret:
            raise UnavailableError(f"credential_env {spec.credential_env} is not set")
        return secret
    if spec.credential_file:
        try:
            return spec.credential_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UnavailableError(f"credential_file {spec.credential_file} unreadable: {exc.strerror}") from exc
    return None


class _GatewaySession(ClientSession):
    """A client session that answers every request the server makes with a refusal, and reports it."""

    def __init__(self, *args: Any, on_refused: Callable[[str], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_refused = on_refused

    async def dispatch_input_request(
        self, ctx: ClientRequestContext, request: types.InputRequest
    ) -> types.InputResponse | types.ErrorData:
        method = str(getattr(request, "method", type(request).__name__))
        await self._on_refused(method)
        return types.ErrorData(code=types.INVALID_REQUEST, message=f"{method} is refused by the gateway")


class _Watched:
    """The transport's read stream, setting ``ended`` when it closes (the server exited or the session ended)."""

    def __init__(self, stream: Any, ended: Callable[[], None]) -> None:
        self._stream = stream
        self._ended = ended

    async def receive(self) -> Any:
        try:
            return await self._stream.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._ended()
            raise

    async def aclose(self) -> None:
        await self._stream.aclose()

    def __aiter__(self) -> _Watched:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _Watched:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class UpstreamSession:
    """The one session to one upstream server of one catalog."""

    def __init__(self, catalog: str, spec: ServerSpec, egress: EgressSettings, listener: Listener) -> None:
        self.catalog, self.spec, self._egress, self._listener = catalog, spec, egress, listener
        self.state = "connecting"  # connecting | up | down
        self.error: str | None = None
        self.tools: tuple[dict[str, Any], ...] | None = None  # the last listing, raw; None while not up
        self.restarts = 0
        self._session: ClientSession | None = None
        self._wake = anyio.Event()
        self._broken = False
        self._up = anyio.Event()

    @property
    def name(self) -> str:
        return self.spec.name

    async def run(self) -> None:
        """Keep the session up until cancelled: connect, serve, and on failure reconnect with backoff."""
        delay = _BACKOFF_FIRST
        while True:
            opened = time.monotonic()
            try:
                await self._serve_once()
                error = "the connection ended"
            except Exception as exc:  # noqa: BLE001 - any failure of one upstream only takes that upstream down
                error = _describe(exc)
            self._session, self.state, self.error, self.tools = None, "down", error, None
            if self._up.is_set():  # a call waiting for the next session keeps its event
                self._up = anyio.Event()
            logger.warning("upstream %s/%s is down: %s", self.catalog, self.name, error)
            await self._listener.tools_changed(self)
            delay = _BACKOFF_FIRST if time.monotonic() - opened > _STABLE else delay
            await anyio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)
            self.restarts += 1

    async def _serve_once(self) -> None:
        self._broken, self._wake = False, anyio.Event()
        async with self._transport() as (read, write):
            async with _GatewaySession(
                _Watched(read, self._end),
                write,
                message_handler=self._on_message,
                client_info=_CLIENT,
                on_refused=self._refused,
            ) as session:
                with anyio.fail_after(self.spec.timeout):
                    await session.initialize()
                    await self._list(session)
                self._session, self.state, self.error = session, "up", None
                self._up.set()
                await self._listener.tools_changed(self)
                await self._watch(session)

    async def snapshot(self) -> tuple[dict[str, Any], ...]:
        """Connect once, list the tools, disconnect (``catalog pin`` and ``catalog drift``)."""
        async with self._transport() as (read, write):
            async with _GatewaySession(read, write, client_info=_CLIENT, on_refused=self._refused) as session:
                with anyio.fail_after(self.spec.timeout):
                    await session.initialize()
                    await self._list(session)
        return self.tools or ()

    async def _watch(self, session: ClientSession) -> None:
        while True:
            with anyio.move_on_after(self.spec.refresh):
                await self._wake.wait()
            self._wake = anyio.Event()
            if self._broken:
                return
            with anyio.fail_after(self.spec.timeout):
                await self._list(session)
            await self._listener.tools_changed(self)

    async def _list(self, session: ClientSession) -> None:
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(100):  # pages; a server that never stops paging is cut off
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            raw = (await session.send_request(types.ListToolsRequest(params=params), Raw)).wire()
            tools += [tool for tool in raw.get("tools", []) if isinstance(tool, dict)]
            cursor = raw.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                break
        self.tools = tuple(tools)

    def _end(self) -> None:
        self._broken = True
        if self._up.is_set():  # calls waiting for the session wait for the next one
            self._up = anyio.Event()
        self._wake.set()

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self._wake.set()
        elif isinstance(message, Exception):
            logger.warning("upstream %s/%s transport error: %s", self.catalog, self.name, _describe(message))

    async def _refused(self, method: str) -> None:
        await self._listener.refused(self, method)

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[Any]:
        spec = self.spec
        if spec.transport == "stdio":
            argv = child_argv(spec)
            params = StdioServerParameters(command=argv[0], args=argv[1:], cwd=spec.cwd)
            async with stdio_client(params, errlog=_errlog()) as streams:
                yield streams
            return
        assert spec.url is not None  # noqa: S101 - ServerSpec requires it for HTTP transports
        secret = server_credential(spec)
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        if spec.transport == "sse":

            def factory(
                headers: dict[str, str] | None = None, timeout: Any = None, auth: Any = None
            ) -> httpx2.AsyncClient:
                client = guarded_httpx2_client(self._egress, max_connections=4, headers=None)
                client.headers.update(headers or {})
                return client

            async with sse_client(spec.url, headers=headers, httpx_client_factory=factory) as streams:
                yield streams
            return
        async with guarded_httpx2_client(self._egress, max_connections=8, headers=None) as http:
            http.headers.update(headers)
            http.timeout = httpx2.Timeout(spec.timeout, read=None)
            cap = spec.max_response_bytes + 65_536
            async with streamable_http_client(spec.url, http_client=http, max_sse_event_size=cap) as streams:
                yield streams

    async def call(self, name: str, arguments: Mapping[str, Any], progress: ProgressFnT | None) -> dict[str, Any]:
        """``tools/call`` on the shared session; returns the raw result object.

        Raises:
            UpstreamTimeoutError: no answer within ``timeout`` (the upstream is told the call is cancelled).
            UpstreamError: the server is down, the connection ended mid-call, or it answered with an error.
        """
        request = types.CallToolRequest(params=types.CallToolRequestParams(name=name, arguments=dict(arguments)))
        try:
            with anyio.fail_after(self.spec.timeout):
                for attempt in range(2):
                    session = await self._ready_session(attempt)
                    try:
                        return (await session.send_request(request, Raw, progress_callback=progress)).wire()
                    except MCPError as exc:
                        if not (self._session_gone(exc) and attempt == 0):
                            raise self._failed(exc) from exc
                        # The HTTP session expired before the server saw the call: re-establish and send it once more.
                        self._end()
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"upstream {self.name}: no answer within {self.spec.timeout}s") from exc
        raise UpstreamError(f"upstream {self.name}: the session could not be re-established")

    async def _ready_session(self, attempt: int) -> ClientSession:
        if attempt:
            await self._up.wait()
        if self._session is None or self._broken:
            raise UpstreamError(f"upstream {self.name} is {self.state}: {self.error or 'not connected'}")
        return self._session

    def _session_gone(self, exc: MCPError) -> bool:
        return (
            self.spec.transport != "stdio"
            and exc.error.code == types.INVALID_REQUEST
            and exc.error.message.strip().lower() in _SESSION_GONE
        )

    def _failed(self, exc: MCPError) -> UpstreamError:
        if exc.error.code == types.CONNECTION_CLOSED or self._session_gone(exc):
            self._end()
            return UpstreamError(f"upstream {self.name}: the connection ended during the call")
        return UpstreamError(f"upstream {self.name} answered error {exc.error.code}: {exc.error.message[:200]}")


def _errlog() -> TextIO:
    """Where a stdio server's stderr goes: the gateway's own stderr (the process's, when it has been replaced by
    something without a file descriptor)."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__ or sys.stderr
    return sys.stderr


def _describe(exc: BaseException) -> str:
    """One line for a failure, looking inside the exception groups anyio nests task failures in."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {str(exc)[:200]}"
