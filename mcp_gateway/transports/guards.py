"""Slow clients: how long a connection may take to send its request and to take its answer, and how many one
client may hold.

uvicorn bounds only the idle time between requests (``timeout_keep_alive``), and any byte received cancels that
timer; so a client that sends its headers a byte at a time, or its body at a byte a second, holds a connection (a
file descriptor, and a task once the headers are in) for as long as it likes, without ever presenting a token. The
protocol here is uvicorn's h11 protocol with these bounds, checked where the bytes arrive, before any ASGI code:

* ``http.header_timeout``: from connecting, or from the end of the previous response on a kept-alive connection,
  to the end of the request's headers; then it is answered ``408`` and closed.
* ``http.body_timeout``: from the end of the headers to the end of the body, whether the app reads the body or
  answers without it (a ``401`` does); then the connection is dropped.
* ``http.send_timeout``: how long output may wait unread, the transport's buffer past its high-water mark; then
  the connection is dropped. A client that reads, however slow its stream, is not cut off.
* ``http.max_connections_per_client``: open connections one client address may hold; more are answered ``503``.

None of them limits the time the app takes to answer: a slow tool call, or an idle SSE stream, is not a slow client.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, ClassVar, Literal

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from mcp_gateway.config import HttpSettings
from mcp_gateway.telemetry import DROPPED_CONNECTIONS

__all__ = ["GuardedH11Protocol", "guarded_protocol"]

logger = logging.getLogger(__name__)

Phase = Literal["headers", "body"]

_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_BUSY_BODY = b"Too many connections from this address\n"
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
# After a polite close (a last answer written, then FIN), how long the peer has to take it before the connection is
# aborted: a peer that does not read would otherwise keep it half-closed.
_CLOSE_GRACE = 1.0


class _ClientCounts:
    """Open connections per client address, shared by every connection one server accepts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[str] = Counter()
        self._refusing: set[str] = set()

    def admit(self, address: str) -> bool:
        if self.open[address] >= self.limit:
            if address not in self._refusing:  # once per episode: a flood must not flood the log too
                self._refusing.add(address)
                logger.warning(
                    "refusing connections from %s: %d open (http.max_connections_per_client)", address, self.limit
                )
            return False
        self.open[address] += 1
        return True

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]
        if self.open[address] < self.limit:
            self._refusing.discard(address)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the bounds in the module docstring; built per server by :func:`guarded_protocol`.

    It serves no WebSocket upgrade: the protocol that would take the connection over carries none of the bounds.
    """

    limits: ClassVar[HttpSettings]
    clients: ClassVar[_ClientCounts]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.ws_protocol_class = None
        self._phase: Phase | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None
        self._address: str | None = None  # set while the connection counts against its address
        self._closing = False
        self._lost = False

    # -- asyncio.Protocol ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.client[0] if self.client else ""
        if not self.clients.admit(address):
            self._drop("per_client_limit", answer=_BUSY)
            return
        self._address = address
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # bytes after the decision to close are not parsed: no request starts on a closing connection
        super().data_received(data)
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        for timer in (self._deadline, self._stall):
            if timer is not None:
                timer.cancel()
        self._deadline = self._stall = None
        if self._address is not None:
            self.clients.release(self._address)
            self._address = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None and not self._lost:
            self._stall = self.loop.call_later(self.limits.send_timeout, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    # -- uvicorn -------------------------------------------------------------------------------------------------

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()  # a kept-alive connection starts its next request's header clock here

    # -- the bounds ----------------------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Arm the bound of the phase the client is in: sending headers, sending a body, or neither."""
        state = self.conn.their_state
        phase: Phase | None = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase == self._phase or self._closing:
            return
        self._phase = phase
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if phase is not None:
            seconds = self.limits.header_timeout if phase == "headers" else self.limits.body_timeout
            self._deadline = self.loop.call_later(seconds, self._expired, phase)

    def _expired(self, phase: Phase) -> None:
        self._deadline = None
        if self._lost or phase != self._phase:
            return
        if phase == "headers":
            # Nothing of an answer is under way between requests, so a 408 cannot interleave with one.
            self._drop("header_timeout", answer=_TIMED_OUT if self.conn.our_state is h11.IDLE else None)
        else:
            self._drop("body_timeout", abort=True)

    def _stalled(self) -> None:
        self._stall = None
        if not self._lost:
            self._drop("send_timeout", abort=True)

    def _drop(self, reason: str, *, answer: bytes | None = None, abort: bool = False) -> None:
        """Close the connection for ``reason``: politely (``answer``, then FIN) or, for a peer that stopped reading
        or sending, at once."""
        self._closing = True
        DROPPED_CONNECTIONS.add(1, {"reason": reason})
        logger.info("dropping the connection from %s: %s", self.client[0] if self.client else "?", reason)
        if abort:
            self.transport.abort()
            return
        if answer is not None:
            self.transport.write(answer)
        self.transport.close()
        self.loop.call_later(_CLOSE_GRACE, self._abort_unless_lost)

    def _abort_unless_lost(self) -> None:
        if not self._lost:
            self.transport.abort()


def guarded_protocol(limits: HttpSettings) -> type[GuardedH11Protocol]:
    """The protocol class for one uvicorn server (``Config(http=...)``): bounded by ``limits``, counting its own
    connections per client address."""
    counts = _ClientCounts(limits.max_connections_per_client)

    class _ServerProtocol(GuardedH11Protocol):
        pass

    _ServerProtocol.limits = limits
    _ServerProtocol.clients = counts
    return _ServerProtocol
