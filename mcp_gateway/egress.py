"""The one way out: every outbound HTTP request the gateway makes goes through a guarded client.

The guard allows only origins on ``egress.allow``, never follows redirects, and ignores proxy environment
variables and ``.netrc`` (``trust_env=False``), so the gateway cannot be steered outside the boundary by its
environment or by an upstream's answer.
"""

from __future__ import annotations

from typing import Any

import httpx
import requests
import requests.adapters

from mcp_gateway.config import EgressSettings

__all__ = ["EgressDeniedError", "guarded_async_client", "guarded_get", "guarded_requests_session"]


class EgressDeniedError(httpx.RequestError):
    """A request named an origin that is not on the egress allowlist; nothing was sent."""


class _GuardedTransport(httpx.AsyncBaseTransport):
    def __init__(self, egress: EgressSettings, inner: httpx.AsyncBaseTransport) -> None:
        self._egress = egress
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self._egress.permits(str(request.url)):
            raise EgressDeniedError(f"egress to {request.url.scheme}://{request.url.netloc.decode()} is not allowed")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def guarded_async_client(egress: EgressSettings, *, max_connections: int = 100) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that can only reach the allowlist. Build it once and reuse it."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    inner = httpx.AsyncHTTPTransport(limits=limits, trust_env=False, retries=0)
    return httpx.AsyncClient(
        transport=_GuardedTransport(egress, inner), trust_env=False, follow_redirects=False, timeout=10.0
    )


def guarded_get(egress: EgressSettings, url: str, *, timeout: float = 10.0, max_bytes: int = 1_048_576) -> bytes:
    """Fetch ``url`` synchronously (start-up only: JWKS), refusing anything off the allowlist.

    Raises:
        EgressDeniedError: ``url`` is not on the allowlist.
        httpx.HTTPError: the request failed, answered an error status, or was larger than ``max_bytes``.
    """
    if not egress.permits(url):
        raise EgressDeniedError(f"egress to {url} is not allowed")
    with (
        httpx.Client(trust_env=False, follow_redirects=False, timeout=timeout) as client,
        client.stream("GET", url) as response,
    ):
        response.raise_for_status()
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise httpx.DecodingError(f"response from {url} exceeds {max_bytes} bytes")
        return bytes(body)


def guarded_requests_session(egress: EgressSettings) -> requests.Session:
    """A ``requests`` session (the OTLP/HTTP exporter's transport) held to the same rules: allowlisted origins
    only, no proxy variables or ``.netrc``. The exporter itself never follows redirects."""
    session = requests.Session()
    session.trust_env = False
    session.max_redirects = 0
    adapter = _GuardedRequestsAdapter(egress)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _GuardedRequestsAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, egress: EgressSettings) -> None:
        super().__init__(max_retries=0)
        self._egress = egress

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if not self._egress.permits(str(request.url)):
            raise requests.ConnectionError(f"egress to {request.url} is not allowed")
        return super().send(request, *args, **kwargs)
