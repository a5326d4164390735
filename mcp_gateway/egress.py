"""The one way out: every outbound HTTP connection the gateway makes is built here.

Two HTTP stacks leave the process: ``httpx`` (REST tools, the JWKS fetch, and telemetry export, whose
``requests`` session hands every request to a guarded ``httpx`` client) and ``httpx2`` (the OpenAI client for
model tools; ``mcp`` 2.x uses it too). Both get the same guard:

* only origins on ``egress.allow`` (scheme, host and port) are requested; anything else is refused before a
  socket is opened;
* redirects are never followed, and proxy environment variables, ``.netrc`` and ``SSL_CERT_*`` are ignored
  (``trust_env=False``);
* the host name is resolved once per connection, every address it resolves to is checked (a name that
  resolves to an unspecified, multicast, link-local or reserved address, such as a cloud metadata endpoint,
  is refused), and the socket is opened to exactly the address that was checked. There is no second lookup
  between check and connect, so DNS rebinding cannot swap the address. A literal IP on the allowlist is
  connected to as written. TLS still verifies the certificate against the host name;
* for model clients, only an allowlist of request headers leaves (the OpenAI client adds headers from
  ``OPENAI_*`` variables of its own accord; see docs/architecture.md).

Build each client once and reuse it: a client carries the connection pool.
"""

from __future__ import annotations

import io
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NoReturn
from urllib.parse import urlsplit

import anyio
import httpcore
import httpcore2
import httpx
import httpx2
import requests
import requests.adapters
import requests.structures

from mcp_gateway.config import EgressSettings
from mcp_gateway.errors import ConfigError

__all__ = [
    "MODEL_HEADERS",
    "AddressPinner",
    "EgressDeniedError",
    "Httpx2EgressDeniedError",
    "guarded_async_client",
    "guarded_client",
    "guarded_get",
    "guarded_httpx2_client",
    "guarded_requests_session",
    "system_resolver",
]

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
SyncResolver = Callable[[str, int], Sequence[str]]

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


class _Refusal(Exception):
    """Library-neutral refusal raised by the pinner; each stack re-raises it as its own error type."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver, in its order, without duplicates."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _system_resolver_sync(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _forbidden(address: str) -> str | None:
    """Why a resolved address may not be connected to, or None."""
    ip = _literal(address.split("%", 1)[0])
    if ip is None:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for reason, flag in (
        ("unspecified", ip.is_unspecified),
        ("multicast", ip.is_multicast),
        ("link-local", ip.is_link_local),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return reason
    return None


class AddressPinner:
    """Resolves an allowlisted host once per connection and returns only addresses that passed the check."""

    def __init__(
        self, egress: EgressSettings, resolver: Resolver | None = None, sync_resolver: SyncResolver | None = None
    ) -> None:
        self._resolver = resolver or system_resolver
        self._sync_resolver = sync_resolver or _system_resolver_sync
        self._targets: frozenset[tuple[str, int]] = frozenset(_host_port(origin) for origin in egress.allow)

    def _target(self, host: str, port: int) -> str | None:
        """The host as the allowlist spells it; refuses a (host, port) that no entry names."""
        key = (host.strip("[]").lower(), port)
        if key not in self._targets:
            raise _Refusal(f"egress to {host}:{port} is not allowed")
        return None if _literal(key[0]) is not None else key[0]

    def _checked(self, host: str, port: int, addresses: Sequence[str]) -> list[str]:
        if not addresses:
            raise _Refusal(f"egress to {host}:{port}: the name resolves to no address")
        for address in addresses:
            reason = _forbidden(address)
            if reason is not None:
                raise _Refusal(f"egress to {host}:{port}: resolves to {address} ({reason})")
        return list(addresses)

    async def addresses(self, host: str, port: int) -> list[str]:
        """The checked addresses to connect to, in resolver order.

        Raises:
            _Refusal: the (host, port) is not on the allowlist, or resolves to no or a forbidden address.
        """
        name = self._target(host, port)
        if name is None:
            return [host.strip("[]")]
        try:
            resolved = await self._resolver(name, port)
        except OSError as exc:
            raise _Refusal(f"egress to {host}:{port}: cannot resolve: {exc}") from exc
        return self._checked(host, port, resolved)

    def addresses_sync(self, host: str, port: int) -> list[str]:
        """As :meth:`addresses`, for the synchronous start-up fetch.

        Raises:
            _Refusal: as :meth:`addresses`.
        """
        name = self._target(host, port)
        if name is None:
            return [host.strip("[]")]
        try:
            resolved = self._sync_resolver(name, port)
        except OSError as exc:
            raise _Refusal(f"egress to {host}:{port}: cannot resolve: {exc}") from exc
        return self._checked(host, port, resolved)


def _host_port(origin: str) -> tuple[str, int]:
    parts = urlsplit(origin)
    # origin_of() always spells both host and port.
    return (parts.hostname or "").lower(), parts.port or 0


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
        except _Refusal as exc:
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
    """What a guarded transport does around the pool it owns: the allowlist and header checks, and the
    translation between the client library's request and response and the connection library's."""

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


class _AsyncBody:
    """A pool's answer body with its errors mapped; mixed into each client library's byte-stream type below."""

    def __init__(self, stack: _Stack, stream: Any) -> None:
        self._stack = stack
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with self._stack.mapped_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        await self._stream.aclose()


class _AsyncFace:
    """An async transport around a guard; mixed into each client library's transport type below."""

    def __init__(self, guard: _Guard) -> None:
        self._guard = guard

    async def handle_async_request(self, request: Any) -> Any:
        return await self._guard.send_async(request)

    async def aclose(self) -> None:
        await self._guard.pool.aclose()


# Each client checks that its transport and its response bodies are of its own types; these are those types.
class _HttpxBody(_AsyncBody, httpx.AsyncByteStream):
    pass


class _Httpx2Body(_AsyncBody, httpx2.AsyncByteStream):
    pass


class _GuardedTransport(_AsyncFace, httpx.AsyncBaseTransport):
    pass


class _GuardedTransport2(_AsyncFace, httpx2.AsyncBaseTransport):
    pass


class _SyncBody(httpx.SyncByteStream):
    def __init__(self, stack: _Stack, stream: Any) -> None:
        self._stack = stack
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with self._stack.mapped_errors():
            yield from self._stream

    def close(self) -> None:
        self._stream.close()


class _SyncGuardedTransport(httpx.BaseTransport):
    def __init__(self, guard: _Guard) -> None:
        self._guard = guard

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._guard.send(request)

    def close(self) -> None:
        self._guard.pool.close()


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


def guarded_async_client(
    egress: EgressSettings, *, max_connections: int = 100, resolver: Resolver | None = None
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that can only reach the allowlist (REST tools). Build it once and reuse it."""
    transport = _GuardedTransport(_async_guard(_HTTPX, egress, max_connections, resolver, None))
    return httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False, timeout=10.0)


def guarded_httpx2_client(
    egress: EgressSettings,
    *,
    max_connections: int = 100,
    resolver: Resolver | None = None,
    headers: frozenset[str] | None = MODEL_HEADERS,
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` that can only reach the allowlist, sending only ``headers`` (None: all).

    This is the client handed to the OpenAI client. Build it once and reuse it.
    """
    transport = _GuardedTransport2(_async_guard(_HTTPX2, egress, max_connections, resolver, headers))
    return httpx2.AsyncClient(transport=transport, trust_env=False, follow_redirects=False, timeout=10.0)


# httpcore's own pool defaults: ten connections, idle ones kept until the server closes them.
_BLOCKING_LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=None, keepalive_expiry=None)


def guarded_client(
    egress: EgressSettings, *, timeout: float = 10.0, resolver: SyncResolver | None = None
) -> httpx.Client:
    """A synchronous ``httpx.Client`` that can only reach the allowlist (JWKS at start-up, telemetry export)."""
    backend = _SyncPinnedBackend(_HTTPX, AddressPinner(egress, sync_resolver=resolver), httpcore.SyncBackend())
    pool = _HTTPX.pool(_BLOCKING_LIMITS, backend, blocking=True)
    transport = _SyncGuardedTransport(_Guard(_HTTPX, egress, pool, None))
    return httpx.Client(transport=transport, trust_env=False, follow_redirects=False, timeout=timeout)


def guarded_get(
    egress: EgressSettings,
    url: str,
    *,
    timeout: float = 10.0,
    max_bytes: int = 1_048_576,
    resolver: SyncResolver | None = None,
) -> bytes:
    """Fetch ``url`` synchronously (start-up only: JWKS), refusing anything off the allowlist.

    Its one use is the start-up JWKS fetch, where any failure means the gateway cannot start as configured:
    hence ``ConfigError`` (CLI exit status 2), carrying the ``httpx`` error's message and, as ``__cause__``, the
    error itself.

    Raises:
        ConfigError: ``url`` is not on the allowlist or its host resolves to a forbidden address (caused by
            ``EgressDeniedError``), or the request failed, answered an error status, or was larger than
            ``max_bytes`` (caused by the ``httpx.HTTPError``).
    """
    try:
        if not egress.permits(url):
            raise EgressDeniedError(f"egress to {url} is not allowed")
        with (
            guarded_client(egress, timeout=timeout, resolver=resolver) as client,
            client.stream("GET", url) as response,
        ):
            response.raise_for_status()
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise httpx.DecodingError(f"response from {url} exceeds {max_bytes} bytes")
            return bytes(body)
    except httpx.HTTPError as exc:
        raise ConfigError(str(exc)) from exc


# -- requests (the OTLP/HTTP exporter's session) ----------------------------------------------------------------

_MAX_EXPORT_ANSWER = 1_048_576


def guarded_requests_session(
    egress: EgressSettings, *, timeout: float = 10.0, resolver: SyncResolver | None = None
) -> requests.Session:
    """A ``requests`` session for the OTLP/HTTP exporter that sends everything through :func:`guarded_client`.

    The exporter only accepts a ``requests`` session; its adapter hands each request to the guarded ``httpx``
    client, so telemetry export gets the same allowlist, address pinning, and refusal of proxies and redirects
    as every other connection. A collector's answer is read up to 1 MiB.
    """
    session = requests.Session()
    session.trust_env = False
    session.max_redirects = 0
    adapter = _GuardedRequestsAdapter(guarded_client(egress, timeout=timeout, resolver=resolver))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _GuardedRequestsAdapter(requests.adapters.BaseAdapter):
    def __init__(self, client: httpx.Client) -> None:
        super().__init__()
        self._client = client

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        seconds = timeout[0] if isinstance(timeout, tuple) else timeout
        body = request.body.encode() if isinstance(request.body, str) else request.body
        try:
            with self._client.stream(
                request.method or "GET",
                str(request.url),
                headers=dict(request.headers),
                content=body,
                timeout=seconds if seconds is not None else httpx.USE_CLIENT_DEFAULT,
            ) as answer:
                content = bytearray()
                for chunk in answer.iter_bytes():
                    content += chunk
                    if len(content) > _MAX_EXPORT_ANSWER:
                        raise requests.ConnectionError(f"answer from {request.url} exceeds {_MAX_EXPORT_ANSWER} bytes")
        except httpx.TimeoutException as exc:
            raise requests.Timeout(str(exc), request=request) from exc
        except httpx.HTTPError as exc:  # EgressDeniedError included: nothing was sent
            raise requests.ConnectionError(str(exc), request=request) from exc
        response = requests.Response()
        response.status_code = answer.status_code
        response.reason = answer.reason_phrase
        response.headers = requests.structures.CaseInsensitiveDict(answer.headers)
        response.raw = io.BytesIO(bytes(content))
        response.encoding = answer.encoding
        response.url = str(request.url)
        response.request = request
        return response

    def close(self) -> None:
        self._client.close()
