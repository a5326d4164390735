"""The guarded ``httpx`` and ``httpx2`` clients: one pinned transport design serving both HTTP stacks.

Part of the egress guard; see ``mcp_gateway.egress``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.cookiejar import Cookie, CookieJar
from types import ModuleType
from typing import Any, NoReturn

import httpcore
import httpcore2
import httpx
import httpx2

from mcp_gateway.config import EgressSettings
from mcp_gateway.egress.addresses import AddressPinner, AddressRefusedError, Resolver, SyncResolver

__all__ = [
    "MODEL_HEADERS",
    "EgressDeniedError",
    "Httpx2EgressDeniedError",
    "guarded_async_client",
    "guarded_client",
    "guarded_httpx2_client",
]

# What a model request may carry. Everything else the OpenAI client adds (``OpenAI-Organization`` and
# ``OpenAI-Project`` from the environment, ``OPENAI_CUSTOM_HEADERS``, ``X-Stainless-*`` platform details) is
# dropped.
MODEL_HEADERS = frozenset(
    {
        "host",
        "accept",
        "accept-encoding",
        "authorization",
        "connection",
        "content-length",
        "content-type",
        "user-agent",
        "x-request-id",
        # W3C trace context, so the engine's own spans join the call's trace. tracestate is left out: it is
        # opaque vendor data a caller can set.
        "traceparent",
    }
)


class EgressDeniedError(httpx.RequestError):
    """``httpx`` stack: a request named an origin or address the guard refuses; nothing was sent."""


class Httpx2EgressDeniedError(httpx2.RequestError):
    """``httpx2`` stack: a request named an origin or address the guard refuses; nothing was sent."""


# -- one guard for both stacks ---------------------------------------------------------------------------------

# httpx and httpx2 re-raise their connection library's errors as same-named errors of their own, the most
# specific one that fits. The guard owns its pool, so it does the same: callers only ever see their client's.
_CORE_ERRORS = (
    "TimeoutException ConnectTimeout ReadTimeout WriteTimeout PoolTimeout NetworkError ConnectError ReadError "
    "WriteError ProxyError UnsupportedProtocol ProtocolError LocalProtocolError RemoteProtocolError"
).split()


@dataclass(frozen=True, slots=True)
class _Stack:
    """One HTTP stack: a client library, the connection library under it, and the error a refusal raises.

    ``httpx`` over ``httpcore`` and ``httpx2`` over ``httpcore2`` have the same shapes under distinct types, so
    the guard is written once against those shapes and takes the modules from here; every name it uses is
    public in both. Inside the guard mypy therefore sees the modules' objects as ``Any``; the clients it builds
    are typed, and tests/test_egress.py runs every guarantee on both stacks.
    """

    http: ModuleType
    core: ModuleType
    denied: type[Exception]
    body: type[_AsyncBody]
    errors: Mapping[type[Exception], type[Exception]]

    @classmethod
    def of(cls, http: ModuleType, core: ModuleType, denied: type[Exception], body: type[_AsyncBody]) -> _Stack:
        return cls(http, core, denied, body, {getattr(core, name): getattr(http, name) for name in _CORE_ERRORS})

    @contextmanager
    def mapped_errors(self) -> Iterator[None]:
        try:
            yield
        except tuple(self.errors) as exc:
            # An MRO runs from the most specific class, so the first mapped one is the closest fit.
            mapped = next(self.errors[kind] for kind in type(exc).__mro__ if kind in self.errors)
            raise mapped(str(exc)) from exc

    def pool(self, limits: Any, backend: _Pinning, *, blocking: bool = False) -> Any:
        """A connection pool of this stack that opens every connection through ``backend``."""
        pool = self.core.ConnectionPool if blocking else self.core.AsyncConnectionPool
        return pool(
            ssl_context=self.http.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=0,
            network_backend=backend,
        )


class _Pinning:
    """A pool's network backend that resolves once, checks, and connects to exactly the address it checked.

    It subclasses neither library's backend type, so that one class serves ``httpcore`` and ``httpcore2``: a
    pool only calls ``connect_tcp``, ``connect_unix_socket`` and ``sleep``, by keyword. ``inner`` is the
    connection library's own backend, which opens the socket to the checked address.
    """

    def __init__(self, stack: _Stack, pinner: AddressPinner, inner: Any) -> None:
        self._stack = stack
        self._pinner = pinner
        self._inner = inner
        self._failures = (stack.core.ConnectError, stack.core.ConnectTimeout)

    @contextmanager
    def _refusals(self) -> Iterator[None]:
        try:
            yield
        except AddressRefusedError as exc:
            raise self._stack.denied(str(exc)) from None

    @contextmanager
    def _attempt(self, failures: list[Exception]) -> Iterator[None]:
        """One connect to one checked address; a failure is kept, and the next address is tried."""
        try:
            yield
        except self._failures as exc:
            failures.append(exc)

    def _unix_refused(self) -> Exception:
        return self._stack.denied("egress over unix sockets is not allowed")


class _PinnedBackend(_Pinning):
    """The async backend, for ``httpcore`` and ``httpcore2`` alike."""

    async def connect_tcp(self, host: str, port: int, **options: Any) -> Any:
        with self._refusals():
            addresses = await self._pinner.addresses(host, port)
        failures: list[Exception] = []
        for address in addresses:
            with self._attempt(failures):
                return await self._inner.connect_tcp(address, port, **options)
        raise failures[-1]  # addresses is never empty

    async def connect_unix_socket(self, path: str, **options: Any) -> NoReturn:
        raise self._unix_refused()

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _SyncPinnedBackend(_Pinning):
    """The blocking twin, for the start-up fetch and the telemetry exporter (``httpcore`` only)."""

    def connect_tcp(self, host: str, port: int, **options: Any) -> Any:
        with self._refusals():
            addresses = self._pinner.addresses_sync(host, port)
        failures: list[Exception] = []
        for address in addresses:
            with self._attempt(failures):
                return self._inner.connect_tcp(address, port, **options)
        raise failures[-1]  # addresses is never empty

    def connect_unix_socket(self, path: str, **options: Any) -> NoReturn:
        raise self._unix_refused()

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _Guard:
    """What a guarded transport does around the pool it owns, for either stack.

    It refuses an origin off the allowlist before the pool sees the request, drops headers off ``headers``
    (None: keeps all), and translates between the client library's request and response and the connection
    library's, as the library's own transport would. TLS is the pool's: the certificate and SNI are checked
    against the URL's host name, whichever checked address the backend connected to.
    """

    def __init__(self, stack: _Stack, egress: EgressSettings, pool: Any, headers: frozenset[str] | None) -> None:
        self.stack = stack
        self.pool = pool
        self._egress = egress
        self._headers = headers

    def outbound(self, request: Any) -> Any:
        """The pool's request for a client's ``request``, whose origin must be on the allowlist.

        Raises:
            EgressDeniedError: (``Httpx2EgressDeniedError`` on ``httpx2``) the origin is not on the allowlist.
        """
        url = request.url
        if not self._egress.permits(str(url)):
            raise self.stack.denied(f"egress to {url.scheme}://{url.netloc.decode()} is not allowed")
        if self._headers is not None:
            for name in {key.lower() for key in request.headers} - self._headers:
                del request.headers[name]
        core = self.stack.core
        return core.Request(
            method=request.method,
            url=core.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )

    def inbound(self, answer: Any, body: object) -> Any:
        """The client's response for the pool's ``answer``, its body read through ``body``."""
        return self.stack.http.Response(
            status_code=answer.status, headers=answer.headers, stream=body, extensions=answer.extensions
        )

    async def send_async(self, request: Any) -> Any:
        outbound = self.outbound(request)
        with self.stack.mapped_errors():
            answer = await self.pool.handle_async_request(outbound)
        return self.inbound(answer, self.stack.body(self.stack, answer.stream))

    def send(self, request: httpx.Request) -> httpx.Response:
        outbound = self.outbound(request)
        with self.stack.mapped_errors():
            answer = self.pool.handle_request(outbound)
        response: httpx.Response = self.inbound(answer, _SyncBody(self.stack, answer.stream))
        return response


class _Body:
    """A pool's answer body, read with the pool's errors mapped to the client library's."""

    def __init__(self, stack: _Stack, stream: Any) -> None:
        self._stack = stack
        self._stream = stream


class _AsyncBody(_Body):
    """Mixed into each client library's async byte-stream type below."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with self._stack.mapped_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        await self._stream.aclose()


class _SyncBody(_Body, httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        with self._stack.mapped_errors():
            yield from self._stream

    def close(self) -> None:
        self._stream.close()


class _Face:
    """A client library's transport around a guard."""

    def __init__(self, guard: _Guard) -> None:
        self._guard = guard


class _AsyncFace(_Face):
    """Mixed into each client library's async transport type below."""

    async def handle_async_request(self, request: Any) -> Any:
        return await self._guard.send_async(request)

    async def aclose(self) -> None:
        await self._guard.pool.aclose()


class _SyncGuardedTransport(_Face, httpx.BaseTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._guard.send(request)

    def close(self) -> None:
        self._guard.pool.close()


# Each client checks that its transport and its response bodies are of its own types; these are those types.
class _HttpxBody(_AsyncBody, httpx.AsyncByteStream):
    pass


class _Httpx2Body(_AsyncBody, httpx2.AsyncByteStream):
    pass


class _GuardedTransport(_AsyncFace, httpx.AsyncBaseTransport):
    pass


class _GuardedTransport2(_AsyncFace, httpx2.AsyncBaseTransport):
    pass


_HTTPX = _Stack.of(httpx, httpcore, EgressDeniedError, _HttpxBody)
_HTTPX2 = _Stack.of(httpx2, httpcore2, Httpx2EgressDeniedError, _Httpx2Body)


def _async_guard(
    stack: _Stack,
    egress: EgressSettings,
    max_connections: int,
    resolver: Resolver | None,
    headers: frozenset[str] | None,
) -> _Guard:
    limits = stack.http.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    backend = _PinnedBackend(stack, AddressPinner(egress, resolver), stack.core.AnyIOBackend())
    return _Guard(stack, egress, stack.pool(limits, backend), headers)


# -- the clients -----------------------------------------------------------------------------------------------


class _NoCookies(CookieJar):
    """A cookie jar that keeps nothing. One client serves every caller, so a cookie a backend set on one call
    would ride along on the next call to it, whoever makes it: no state carries from one call to the next."""

    def set_cookie(self, cookie: Cookie) -> None:
        return  # every way into a jar (a Set-Cookie answer, httpx's Cookies.set) ends here


def guarded_async_client(
    egress: EgressSettings, *, max_connections: int | None = None, resolver: Resolver | None = None
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that can only reach the allowlist and keeps no cookies (REST tools); its pool holds
    ``max_connections`` (default ``egress.pool_size``). Build it once and reuse it."""
    size = egress.pool_size if max_connections is None else max_connections
    transport = _GuardedTransport(_async_guard(_HTTPX, egress, size, resolver, None))
    return httpx.AsyncClient(
        transport=transport, trust_env=False, follow_redirects=False, timeout=10.0, cookies=_NoCookies()
    )


def guarded_httpx2_client(
    egress: EgressSettings,
    *,
    max_connections: int | None = None,
    resolver: Resolver | None = None,
    headers: frozenset[str] | None = MODEL_HEADERS,
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` that can only reach the allowlist, sending only ``headers`` (None: all) and keeping
    no cookies; its pool holds ``max_connections`` (default ``egress.pool_size``).

    This is the client handed to the OpenAI client. Build it once and reuse it.
    """
    size = egress.pool_size if max_connections is None else max_connections
    transport = _GuardedTransport2(_async_guard(_HTTPX2, egress, size, resolver, headers))
    return httpx2.AsyncClient(
        transport=transport, trust_env=False, follow_redirects=False, timeout=10.0, cookies=_NoCookies()
    )


# httpcore's own pool defaults: ten connections, idle ones kept until the server closes them.
_BLOCKING_LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=None, keepalive_expiry=None)


def guarded_client(
    egress: EgressSettings, *, timeout: float = 10.0, resolver: SyncResolver | None = None
) -> httpx.Client:
    """A synchronous ``httpx.Client`` that can only reach the allowlist (JWKS at start-up, telemetry export)."""
    backend = _SyncPinnedBackend(_HTTPX, AddressPinner(egress, sync_resolver=resolver), httpcore.SyncBackend())
    pool = _HTTPX.pool(_BLOCKING_LIMITS, backend, blocking=True)
    transport = _SyncGuardedTransport(_Guard(_HTTPX, egress, pool, None))
    return httpx.Client(
        transport=transport, trust_env=False, follow_redirects=False, timeout=timeout, cookies=_NoCookies()
    )
