"""Streamable HTTP (``/mcp``) and SSE (``/sse``, ``/messages/``) on one Starlette app, an OAuth 2.1 resource server.

Every MCP route needs a valid bearer token (401 with ``WWW-Authenticate`` and RFC 9728 metadata otherwise); a
browser ``Origin`` that is not allowed is refused with 403 before authentication; the ``Host`` header is checked.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware, get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend, RequireAuthMiddleware
from mcp.server.auth.routes import build_resource_metadata_url
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE, TransportSecuritySettings
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_gateway.audit.checkpoint import Checkpointer
from mcp_gateway.config import Settings
from mcp_gateway.errors import UnauthenticatedError
from mcp_gateway.fieldchecks import origin_in, origin_of
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import JwtVerifier, Principal, principal_from
from mcp_gateway.transports.background import checkpointing, federating, reloading
from mcp_gateway.transports.handlers import build_server
from mcp_gateway.transports.sse import SseSessions
from mcp_gateway.transports.wire import ProtocolVersionGuard, StrictJsonGuard

__all__ = ["OriginGuard", "build_app", "http_principal"]


def http_principal() -> Principal:
    """The principal of the HTTP request being served (set by the bearer-auth middleware)."""
    token = get_access_token()
    if token is None:
        raise UnauthenticatedError("no verified token on this HTTP request")
    return principal_from(token)


class OriginGuard:
    """Refuse a browser ``Origin`` that is not allowed, before authentication (403), on every route."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            origins = [value for name, value in scope["headers"] if name == b"origin"]
            # Browsers send one Origin; several are refused rather than letting one of them be picked.
            if len(origins) > 1 or (origins and not self._allowed(origins[0].decode("latin-1"))):
                await PlainTextResponse("Origin not allowed", status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _allowed(self, origin: str) -> bool:
        return origin_in(origin, self.allowed)


class _RequireBearer(RequireAuthMiddleware):
    """The SDK's bearer requirement, with RFC 6750 §3.1's challenge when no credentials were sent: no error code
    (the SDK says ``invalid_token`` either way). A token that was sent and refused still gets ``invalid_token``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if isinstance(scope.get("user"), AuthenticatedUser) or _bearer_sent(scope):
            await super().__call__(scope, receive, send)
            return
        challenge = f'Bearer resource_metadata="{self.resource_metadata_url}"'
        body = {"error_description": "Authentication required"}
        await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": challenge})(scope, receive, send)


def _bearer_sent(scope: Scope) -> bool:
    # Another scheme (Basic, ...) counts as no credentials: RFC 6750 §3.1 names "an unsupported method" so.
    return any(name == b"authorization" and value[:7].lower() == b"bearer " for name, value in scope.get("headers", ()))


# What MCP clients send besides the CORS-safelisted headers. Mcp-Param-* headers (2026-07-28) are per tool and
# not listed: no shipped catalog declares one.
_CORS_REQUEST_HEADERS = (
    "authorization",
    "last-event-id",
    "mcp-protocol-version",
    "mcp-session-id",
    "mcp-method",
    "mcp-name",
)


def _cors(settings: Settings) -> list[Middleware]:
    """CORS for the configured browser origins (``http.allowed_origins``; none by default), so that a browser
    tool such as the MCP Inspector can read the metadata and call ``/mcp``: preflights are answered before
    authentication (they carry no credentials), and responses expose the challenge and the session header.
    Any other origin is refused with 403 by ``OriginGuard`` before this runs."""
    origins = sorted({_browser_origin(origin) for origin in settings.http.allowed_origins})
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=_CORS_REQUEST_HEADERS,
            expose_headers=["www-authenticate", "mcp-session-id", "mcp-protocol-version"],
            max_age=600,
        )
    ]


def _browser_origin(url: str) -> str:
    """An origin as a browser sends it in ``Origin`` (RFC 6454 §6.1): lower-case host, default port left out."""
    scheme, _, rest = origin_of(url).partition("://")
    host, _, port = rest.rpartition(":")
    return f"{scheme}://{host}" if port == ("443" if scheme == "https" else "80") else f"{scheme}://{host}:{port}"


def _strict(app: ASGIApp) -> ASGIApp:
    """Message bodies checked before the SDK parses them (``wire``), within the SDK's own body size limit."""
    return StrictJsonGuard(app, DEFAULT_MAX_REQUEST_BODY_SIZE)


def _security(settings: Settings) -> tuple[TransportSecuritySettings, frozenset[str]]:
    http = settings.http
    base = urlsplit(http.base_url)
    hosts = {f"{http.host}:{http.port}", base.netloc, "127.0.0.1:*", "localhost:*", "[::1]:*"}
    origins = {origin_of(http.base_url), *(origin_of(origin) for origin in http.allowed_origins)}
    if http.host in ("127.0.0.1", "localhost", "::1"):
        scheme = "https" if http.tls else "http"
        origins |= {f"{scheme}://127.0.0.1:{http.port}", f"{scheme}://localhost:{http.port}"}
    # The SDK compares the Origin header verbatim, and browsers leave a default port out.
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=sorted(hosts),
        allowed_origins=sorted(origins | {_browser_origin(origin) for origin in origins}),
    )
    return security, frozenset(origins)


def build_app(
    settings: Settings, gateway: Gateway, verifier: JwtVerifier, checkpointer: Checkpointer | None = None
) -> Starlette:
    """One Starlette app: ``/mcp`` (streamable HTTP), ``/sse`` + ``/messages/`` (SSE), RFC 9728 metadata,
    ``/healthz`` and ``/readyz``. Every MCP route requires a valid bearer token."""
    server = build_server(gateway, http_principal)
    security, origins = _security(settings)
    manager = StreamableHTTPSessionManager(app=server, security_settings=security)
    sse = SseSessions(server, security, settings.http.max_queued_messages)
    # identity.audience is validated as a normalised http(s) URL: the resource tokens are issued for.
    resource = settings.identity.audience
    metadata_url = build_resource_metadata_url(AnyHttpUrl(resource))
    servers = settings.http.authorization_servers or (settings.identity.issuer,)

    def guard(app: ASGIApp) -> ASGIApp:
        return _RequireBearer(app, required_scopes=[], resource_metadata_url=metadata_url)

    # RFC 9728 metadata, written out rather than through the SDK's helper: its URL type appends "/" to bare
    # origins, and a resource or issuer that differs by one character from what tokens carry breaks clients.
    metadata = {
        "resource": resource,
        "authorization_servers": list(servers),
        "bearer_methods_supported": ["header"],
        "resource_name": "mcp-gateway",
    }

    async def protected_resource_metadata(request: Request) -> JSONResponse:
        return JSONResponse(metadata, headers={"Cache-Control": "public, max-age=3600"})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        # Off the event loop and bounded: the probe writes to the trail, which another process may have locked.
        ready: bool = False
        reason: str | None = "readiness check timed out"
        with anyio.move_on_after(settings.audit.write_timeout + 1):
            ready, reason = await anyio.to_thread.run_sync(gateway.ready, abandon_on_cancel=True)
        # An upstream that is down does not make the gateway unready: its tools are simply not listed.
        body = {"status": "ready" if ready else "unavailable", "reason": reason, "upstreams": gateway.upstreams()}
        return JSONResponse(body, 200 if ready else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        interval = settings.audit.checkpoint_interval
        async with (
            manager.run(),
            reloading(gateway),
            federating(gateway),
            checkpointing(checkpointer, interval),
            verifier.keyring.running(),
        ):
            yield
        await gateway.aclose()

    routes: list[Route | Mount] = [
        Route("/mcp", endpoint=guard(ProtocolVersionGuard(_strict(StreamableHTTPASGIApp(manager))))),
        Route("/sse", endpoint=guard(sse.stream), methods=["GET"]),
        Mount("/messages/", app=guard(_strict(sse.messages))),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route(urlsplit(str(metadata_url)).path, protected_resource_metadata, methods=["GET", "OPTIONS"]),
    ]
    if settings.console.enabled:
        from mcp_gateway.console.app import console_mount

        routes.append(console_mount(settings, gateway, verifier))
    middleware = [
        Middleware(OriginGuard, allowed=origins),
        *_cors(settings),
        Middleware(AuthenticationMiddleware, backend=BearerAuthBackend(verifier)),
        Middleware(AuthContextMiddleware),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
