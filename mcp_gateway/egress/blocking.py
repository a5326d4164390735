"""The blocking ways out, both over ``guarded_client``: the start-up fetch and the OTLP exporter's session.

Part of the egress guard; see ``mcp_gateway.egress``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import httpx
import requests
import requests.adapters
import requests.structures

from mcp_gateway.config import EgressSettings
from mcp_gateway.egress.addresses import SyncResolver
from mcp_gateway.egress.clients import EgressDeniedError, guarded_client
from mcp_gateway.errors import ConfigError

__all__ = ["guarded_get", "guarded_requests_session"]


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
