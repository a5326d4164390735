"""The SSE transport (``GET /sse``, ``POST /messages/``), with a bound on what one session may leave unread.

The SDK's SSE transport runs each request in a task of its own and hands each answer to the client's stream
through unbuffered memory streams. A client that stops reading its stream but goes on posting calls therefore
leaves every answered call waiting in its task, result and all: one caller pinned 110-130 MB that way. Here each
session counts the answers waiting to be written to its stream; past ``http.max_queued_messages`` the session is
closed, once, with a warning: it takes no more requests (a message posted to it is answered 404, as for a session
that does not exist), answers still waiting are dropped and calls in flight are cancelled. Its connection goes as
soon as the client reads its end, or at ``http.send_timeout`` (:mod:`mcp_gateway.transports.guards`) if it never
does.

A message posted as its session's stream closes makes the SDK raise ``ClosedResourceError`` (or
``BrokenResourceError``) after it has answered 202: the end of a session is expected, and is logged at debug, not as
an error with a traceback.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import uuid
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar
from urllib.parse import parse_qsl

import anyio
from mcp.server.lowlevel import Server
from mcp.server.sse import SseServerTransport
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.message import SessionMessage
from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send

__all__ = ["SseSessions"]

logger = logging.getLogger(__name__)

_SESSION_ID = re.compile(rb"session_id=([0-9a-fA-F]{32})")
# What the SDK answers for a session it does not know; a closed session is refused the same way.
_NO_SESSION = PlainTextResponse("Could not find session", status_code=404)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
T_contra = TypeVar("T_contra", contravariant=True)


class _Receiving(Protocol[T_co]):
    async def receive(self) -> T_co: ...
    async def aclose(self) -> None: ...


class _Sending(Protocol[T_contra]):
    async def send(self, item: T_contra, /) -> None: ...
    async def aclose(self) -> None: ...


class _Backlog:
    """The answers one session has waiting to be written to its stream; closes the session past ``limit``."""

    def __init__(self, limit: int, client: str, closed_sessions: set[str]) -> None:
        self.limit = limit
        self.client = client
        self.session: str | None = None  # the id the SDK gave the session, read off its endpoint event
        self.waiting = 0
        self.closed = False
        self.reader: anyio.CancelScope | None = None  # the receive in progress, cancelled to end the session
        self._closed_sessions = closed_sessions

    def note_session(self, message: Message) -> None:
        """Read the session id off the stream's first event (``endpoint``, naming ``...?session_id=<hex>``)."""
        if self.session is None and message["type"] == "http.response.body":
            found = _SESSION_ID.search(message.get("body", b""))
            if found is not None:
                self.session = found.group(1).decode("ascii").lower()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.session is not None:
            self._closed_sessions.add(self.session)  # messages posted from now on are refused, not queued
        logger.warning(
            "SSE session from %s closed: %d answers waiting unread on its stream (http.max_queued_messages)",
            self.client,
            self.waiting,
        )
        if self.reader is not None:
            self.reader.cancel()


class _Closing:
    """``async with`` closes the stream, as anyio's streams do."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _BacklogReader(_Closing, Generic[T]):
    """The session's incoming messages, ending (as at EOF) once its backlog has closed it."""

    def __init__(self, inner: _Receiving[T], backlog: _Backlog) -> None:
        self._inner = inner
        self._backlog = backlog

    @property
    def last_context(self) -> contextvars.Context | None:
        # The SDK runs each request in the context its POST was received in (the caller's verified token).
        context: contextvars.Context | None = getattr(self._inner, "last_context", None)
        return context

    async def receive(self) -> T:
        backlog = self._backlog
        if not backlog.closed:
            with anyio.CancelScope() as scope:
                backlog.reader = scope
                try:
                    return await self._inner.receive()
                finally:
                    backlog.reader = None
        raise anyio.EndOfStream

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


class _BacklogWriter(_Closing, Generic[T]):
    """The session's outgoing messages, counted while they wait to be written; dropped once the session is closed."""

    def __init__(self, inner: _Sending[T], backlog: _Backlog) -> None:
        self._inner = inner
        self._backlog = backlog

    async def send(self, item: T, /) -> None:
        backlog = self._backlog
        if backlog.waiting >= backlog.limit:
            backlog.close()
        if backlog.closed:
            return  # nothing more reaches a closed session's client; its task ends here instead of waiting
        backlog.waiting += 1
        try:
            await self._inner.send(item)
        finally:
            backlog.waiting -= 1

    async def aclose(self) -> None:
        await self._inner.aclose()


class SseSessions:
    """``GET /sse`` (:meth:`stream`) and ``POST /messages/`` (:meth:`messages`) over the SDK's SSE transport."""

    def __init__(self, server: Server[Any], security: TransportSecuritySettings, max_queued_messages: int) -> None:
        self.server = server
        self.transport = SseServerTransport("/messages/", security_settings=security)
        self.max_queued_messages = max_queued_messages
        # Sessions closed for their backlog whose stream has not ended yet: the SDK would still accept messages.
        self._closed: set[str] = set()

    async def stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One SSE connection served by the MCP server loop, its backlog bounded."""
        client = scope.get("client")
        backlog = _Backlog(self.max_queued_messages, client[0] if client else "?", self._closed)

        async def sending(message: Message) -> None:
            backlog.note_session(message)
            await send(message)

        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    streams = await stack.enter_async_context(self.transport.connect_sse(scope, receive, sending))
                except ValueError:
                    return  # the SDK already answered 403/421 for a bad Host or Origin
                read_stream, write_stream = streams
                reader: _BacklogReader[SessionMessage | Exception] = _BacklogReader(read_stream, backlog)
                writer: _BacklogWriter[SessionMessage] = _BacklogWriter(write_stream, backlog)
                await self.server.run(reader, writer, self.server.create_initialization_options())
        finally:
            self._closed.discard(backlog.session or "")

    async def messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A message posted to a session, handed to the SDK; a session that closed meanwhile is not an error."""
        if _posted_session(scope) in self._closed:
            await _NO_SESSION(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.transport.handle_post_message(scope, receive, tracked)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            logger.debug("message posted to an SSE session that has closed: dropped")
            if not started:
                await _NO_SESSION(scope, receive, send)


def _posted_session(scope: Scope) -> str | None:
    """The session a message is posted to, spelt as the endpoint event spells it. The last ``session_id`` counts, as
    for the SDK (Starlette's query parameters), which parses it as a UUID."""
    values = [
        value for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")) if name == "session_id"
    ]
    try:
        return uuid.UUID(hex=values[-1]).hex if values else None
    except ValueError:
        return None
