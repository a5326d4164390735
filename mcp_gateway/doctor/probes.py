"""Demonstrations of the egress guard: real requests through the gateway's own clients, to listeners on loopback.

Every client the gateway builds (``egress.guarded_client`` for the start-up JWKS fetch, the requests session of
the telemetry exporter, ``guarded_async_client`` for REST tools and the JWKS refresh, ``guarded_httpx2_client``
for models) is asked to:

* reach an address that is not on the configured ``egress.allow``: a listener this process opened on 127.0.0.1,
  so the doctor sees that no connection arrived, not only that an error was raised; and the cloud metadata
  address. Each must be refused, and the listener must have seen no connection;
* reach a name on an allowlist that resolves to the metadata address (the resolver is the doctor's, standing in
  for a poisoned DNS answer): refused before any socket is opened;
* reach an allowed listener while ``HTTP_PROXY``, ``HTTPS_PROXY`` and ``ALL_PROXY`` (both spellings) point at a
  second listener: the request must arrive directly, and the "proxy" must see no connection.

The variables are set for the duration of the probe and restored after it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import httpx2
import requests

from mcp_gateway.config import EgressSettings, Settings
from mcp_gateway.doctor.finding import Finding, Status
from mcp_gateway.egress import (
    guarded_async_client,
    guarded_client,
    guarded_httpx2_client,
    guarded_requests_session,
)

__all__ = ["PROXY_VARIABLES", "probe_checks"]

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
_METADATA_URL = "http://169.254.169.254:80/latest/meta-data/"
_ANSWER = b"mcp-gateway doctor"
_TIMEOUT = 5.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0

    def verify_request(self, request: Any, client_address: Any) -> bool:
        # Called once per accepted connection, before any byte is read: the count is of connections, not requests.
        self.connections += 1
        return True


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(_ANSWER)))
        self.end_headers()
        self.wfile.write(_ANSWER)

    do_CONNECT = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def _listener() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(_TIMEOUT)


def _url(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


# -- one GET through each of the gateway's clients ---------------------------------------------------------------


def _sync_get(egress: EgressSettings, url: str, resolver: Any = None) -> bytes:
    with guarded_client(egress, timeout=_TIMEOUT, resolver=resolver) as client:
        return client.get(url).raise_for_status().content


def _requests_get(egress: EgressSettings, url: str, resolver: Any = None) -> bytes:
    with guarded_requests_session(egress, timeout=_TIMEOUT, resolver=resolver) as session:
        response = session.get(url, timeout=_TIMEOUT)
        response.raise_for_status()
        return response.content


def _async_get(egress: EgressSettings, url: str, resolver: Any = None) -> bytes:
    async def get() -> bytes:
        async with guarded_async_client(egress, max_connections=1, resolver=resolver) as client:
            return (await client.get(url, timeout=_TIMEOUT)).raise_for_status().content

    return anyio.run(get)


def _httpx2_get(egress: EgressSettings, url: str, resolver: Any = None) -> bytes:
    async def get() -> bytes:
        async with guarded_httpx2_client(egress, max_connections=1, resolver=resolver) as client:
            response = await client.get(url, timeout=_TIMEOUT)
            response.raise_for_status()
            return response.content

    return anyio.run(get)


_CLIENTS: tuple[tuple[str, Callable[..., bytes]], ...] = (
    ("httpx (JWKS at start-up)", _sync_get),
    ("requests (telemetry export)", _requests_get),
    ("httpx async (REST tools, JWKS refresh)", _async_get),
    ("httpx2 (models)", _httpx2_get),
)


# What the clients raise for a refused or failed request; a probe reports it as its result.
_CLIENT_ERRORS = (httpx.HTTPError, httpx2.HTTPError, requests.RequestException)


def _attempt(get: Callable[..., bytes], egress: EgressSettings, url: str, resolver: Any = None) -> bytes | Exception:
    try:
        return get(egress, url, resolver)
    except _CLIENT_ERRORS as exc:
        return exc


# -- the probes ---------------------------------------------------------------------------------------------------


def _refused(client: str, target: str, outcome: bytes | Exception, connections: int | None) -> Finding:
    subject = f"{client} -> {target}"
    if not isinstance(outcome, Exception):
        return Finding("egress guard", subject, Status.FAIL, "not refused: the request was answered")
    if "not allowed" not in str(outcome) and "resolves to" not in str(outcome):
        return Finding("egress guard", subject, Status.FAIL, f"failed, but not by the guard: {outcome}")
    if connections:
        return Finding(
            "egress guard", subject, Status.FAIL, f"refused, but the listener saw {connections} connection(s)"
        )
    seen = "" if connections is None else "; the listener saw no connection"
    return Finding("egress guard", subject, Status.PASS, f"refused: {type(outcome).__name__}: {outcome}{seen}")


def _metadata_resolver(host: str, port: int) -> list[str]:
    return ["169.254.169.254"]


async def _metadata_resolver_async(host: str, port: int) -> list[str]:
    return ["169.254.169.254"]


def _refusal_probes(egress: EgressSettings) -> Iterator[Finding]:
    with _listener() as server:
        url = _url(server)
        if egress.permits(url):  # a listener on a port the allowlist names: no refusal to demonstrate with it
            yield Finding("egress guard", url, Status.WARN, "the probe's own port is on egress.allow; not probed")
        else:
            for client, get in _CLIENTS:
                outcome = _attempt(get, egress, url + "/")
                yield _refused(client, url, outcome, server.connections)
    if not egress.permits(_METADATA_URL):
        outcome = _attempt(_sync_get, egress, _METADATA_URL)
        yield _refused(_CLIENTS[0][0], _METADATA_URL, outcome, None)
    poisoned = EgressSettings(allow=("http://doctor-probe.invalid:80",))
    for client, get in _CLIENTS:
        resolver = _metadata_resolver if get in (_sync_get, _requests_get) else _metadata_resolver_async
        outcome = _attempt(get, poisoned, "http://doctor-probe.invalid:80/", resolver)
        yield _refused(client, "an allowed name resolving to 169.254.169.254", outcome, None)


@contextmanager
def _proxy_variables(proxy: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in (*PROXY_VARIABLES, "NO_PROXY", "no_proxy")}
    try:
        for name in PROXY_VARIABLES:
            os.environ[name] = proxy
        os.environ.pop("NO_PROXY", None)
        os.environ.pop("no_proxy", None)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _proxy_probes() -> Iterator[Finding]:
    with _listener() as target, _listener() as proxy, _proxy_variables(_url(proxy)):
        egress = EgressSettings(allow=(_url(target),))
        for client, get in _CLIENTS:
            before = target.connections
            outcome = _attempt(get, egress, _url(target) + "/")
            subject = f"{client} with *_PROXY={_url(proxy)}"
            if proxy.connections:
                reason = f"the proxy saw {proxy.connections} connection(s): proxy variables are honoured"
                yield Finding("proxy variables", subject, Status.FAIL, reason)
            elif outcome != _ANSWER or target.connections == before:
                yield Finding("proxy variables", subject, Status.FAIL, f"the direct request failed: {outcome!r}")
            else:
                yield Finding("proxy variables", subject, Status.PASS, "ignored: went straight to the target")


def probe_checks(settings: Settings) -> list[Finding]:
    """The guard's refusals and its indifference to proxy variables, shown with real requests on loopback."""
    try:
        socket.getaddrinfo("127.0.0.1", 0)
    except OSError as exc:  # pragma: no cover (no loopback: nothing can be probed)
        return [Finding("egress guard", "127.0.0.1", Status.FAIL, f"cannot probe on loopback: {exc}")]
    return [*_refusal_probes(settings.egress), *_proxy_probes()]
