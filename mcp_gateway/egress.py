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

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
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


# -- httpx (REST tools, JWKS) ---------------------------------------------------------------------------------


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, pinner: AddressPinner) -> None:
        self._pinner = pinner
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self._pinner.addresses(host, port)
        except _Refusal as exc:
            raise EgressDeniedError(str(exc)) from None
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # noqa: S101 - addresses is never empty
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise EgressDeniedError("egress over unix sockets is not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _SyncPinnedBackend(httpcore.NetworkBackend):
    def __init__(self, pinner: AddressPinner) -> None:
        self._pinner = pinner
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self._pinner.addresses_sync(host, port)
        except _Refusal as exc:
            raise EgressDeniedError(str(exc)) from None
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # noqa: S101 - addresses is never empty
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.NetworkStream:
        raise EgressDeniedError("egress over unix sockets is not allowed")


class _GuardedTransport(httpx.AsyncBaseTransport):
    def __init__(self, egress: EgressSettings, pinner: AddressPinner, limits: httpx.Limits) -> None:
        self._egress = egress
        inner = httpx.AsyncHTTPTransport(limits=limits, trust_env=False, retries=0)
        # httpx's transport takes no network backend; its pool is replaced by one that connects only to
        # addresses the pinner checked (tests/test_egress.py pins that this pool is the one used).
        inner._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=0,
            network_backend=_PinnedBackend(pinner),
        )
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self._egress.permits(str(request.url)):
            raise EgressDeniedError(f"egress to {request.url.scheme}://{request.url.netloc.decode()} is not allowed")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def guarded_async_client(
    egress: EgressSettings, *, max_connections: int = 100, resolver: Resolver | None = None
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that can only reach the allowlist. Build it once and reuse it."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    transport = _GuardedTransport(egress, AddressPinner(egress, resolver), limits)
    return httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False, timeout=10.0)


class _SyncGuardedTransport(httpx.HTTPTransport):
    def __init__(self, egress: EgressSettings, pinner: AddressPinner) -> None:
        super().__init__(trust_env=False, retries=0)
        self._egress = egress
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False), retries=0, network_backend=_SyncPinnedBackend(pinner)
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self._egress.permits(str(request.url)):
            raise EgressDeniedError(f"egress to {request.url.scheme}://{request.url.netloc.decode()} is not allowed")
        return super().handle_request(request)


def guarded_client(
    egress: EgressSettings, *, timeout: float = 10.0, resolver: SyncResolver | None = None
) -> httpx.Client:
    """A synchronous ``httpx.Client`` that can only reach the allowlist (JWKS at start-up, telemetry export)."""
    transport = _SyncGuardedTransport(egress, AddressPinner(egress, sync_resolver=resolver))
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

    Raises:
        EgressDeniedError: ``url`` is not on the allowlist, or its host resolves to a forbidden address.
        httpx.HTTPError: the request failed, answered an error status, or was larger than ``max_bytes``.
    """
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


# -- httpx2 (the OpenAI client; the mcp SDK's own stack) --------------------------------------------------------


class _PinnedBackend2(httpcore2.AsyncNetworkBackend):
    def __init__(self, pinner: AddressPinner) -> None:
        self._pinner = pinner
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            addresses = await self._pinner.addresses(host, port)
        except _Refusal as exc:
            raise Httpx2EgressDeniedError(str(exc)) from None
        failure: httpcore2.ConnectError | httpcore2.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # noqa: S101 - addresses is never empty
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        raise Httpx2EgressDeniedError("egress over unix sockets is not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport2(httpx2.AsyncBaseTransport):
    def __init__(
        self, egress: EgressSettings, pinner: AddressPinner, limits: httpx2.Limits, headers: frozenset[str] | None
    ) -> None:
        self._egress = egress
        self._headers = headers
        inner = httpx2.AsyncHTTPTransport(limits=limits, trust_env=False, retries=0)
        inner._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=0,
            network_backend=_PinnedBackend2(pinner),
        )
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not self._egress.permits(str(request.url)):
            raise Httpx2EgressDeniedError(
                f"egress to {request.url.scheme}://{request.url.netloc.decode()} is not allowed"
            )
        if self._headers is not None:
            for name in {key.lower() for key in request.headers} - self._headers:
                del request.headers[name]
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


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
    limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    transport = _GuardedTransport2(egress, AddressPinner(egress, resolver), limits, headers)
    return httpx2.AsyncClient(transport=transport, trust_env=False, follow_redirects=False, timeout=10.0)


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
        response._content = bytes(content)
        response.encoding = answer.encoding
        response.url = str(request.url)
        response.request = request
        return response

    def close(self) -> None:
        self._client.close()
