"""Wiring: the only module that imports every component, and the three transports around the core.

``build_gateway`` assembles the transport-free :class:`~mcp_gateway.gateway.Gateway`. ``build_server`` puts it
behind the ``mcp`` SDK's low-level ``Server``; ``build_app`` serves that over streamable HTTP (``/mcp``) and
SSE (``/sse``, ``/messages/``) on one Starlette app acting as an OAuth 2.1 resource server; ``serve_stdio``
serves it over stdio with the token taken from the environment or a file and re-checked on every request.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware, get_access_token
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
from mcp.server.auth.routes import build_resource_metadata_url
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.sse import SseServerTransport
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_gateway import __version__
from mcp_gateway.audit.checkpoint import Checkpointer, Signer
from mcp_gateway.audit.log import AuditEntry, AuditLog, new_request_id
from mcp_gateway.backends import Backend, Backends
from mcp_gateway.backends.http import HttpUpstream
from mcp_gateway.breakglass import BreakGlass
from mcp_gateway.config import Settings, origin_of
from mcp_gateway.egress import guarded_get
from mcp_gateway.errors import GatewayError, UnauthenticatedError, to_mcp_error
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import JwtVerifier, Principal, load_jwks, principal_from
from mcp_gateway.policy import PolicyEngine
from mcp_gateway.telemetry import current_trace_id, setup_telemetry, tracer

__all__ = [
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "build_app",
    "build_backends",
    "build_gateway",
    "build_server",
    "build_verifier",
    "serve_stdio",
]

logger = logging.getLogger(__name__)

TOKEN_ENV = "MCP_GATEWAY_TOKEN"  # noqa: S105 - a variable name, not a secret
TOKEN_FILE_ENV = "MCP_GATEWAY_TOKEN_FILE"  # noqa: S105 - a variable name, not a secret

PrincipalSource = Callable[[], Principal]


def build_verifier(settings: Settings) -> JwtVerifier:
    """The JWT verifier, with keys from the JWKS file or (allowlisted) URL.

    Raises:
        ConfigError: the JWKS cannot be loaded.
    """
    keys = load_jwks(settings.identity, lambda url: guarded_get(settings.egress, url))
    return JwtVerifier(settings.identity, keys)


def build_backends(settings: Settings) -> Backends:
    """One backend per kind of tool: REST (built now) and model (built on the first model call)."""
    http = HttpUpstream(settings.egress)

    def models() -> Backend:
        # Imported on first use: importing the OpenAI client costs about a second of start-up.
        from mcp_gateway.backends.model import ModelRouter

        return ModelRouter(settings.egress)

    return Backends({"http": lambda: http, "model": models})


def build_gateway(settings: Settings) -> Gateway:
    """Load policy, catalogs and the audit trail; refuse to start if any of them cannot be established.

    Raises:
        ConfigError: a policy or catalog does not load.
        UnavailableError: the audit database cannot be opened.
    """
    policy = PolicyEngine(settings.policies_dir)
    audit = AuditLog(settings.database_url, durability=settings.audit.durability, max_batch=settings.audit.max_batch)
    breakglass = BreakGlass(settings.database_url, settings.breakglass, audit)
    gateway = Gateway(settings, audit=audit, policy=policy, backends=build_backends(settings), breakglass=breakglass)
    with tracer.start_as_current_span("gateway.start"):
        audit.record(
            AuditEntry(
                event="gateway.start",
                decision="allow",
                outcome="ok",
                request_id=new_request_id(),
                trace_id=current_trace_id(),
                subject="gateway",
                policy_version=policy.snapshot.version,
                detail={"version": __version__, "catalogs_digest": gateway.catalogs.version},
            )
        )
    return gateway


def build_checkpointer(settings: Settings, gateway: Gateway) -> Checkpointer:
    """The checkpoint signer, with its key loaded (or created) now so a bad key stops the start.

    Raises:
        ConfigError: the signing key cannot be loaded.
    """
    signer = Signer.load_or_create(settings.signing_key_path)
    return Checkpointer(gateway.audit, signer, settings.checkpoint_path)


def build_server(gateway: Gateway, principal: PrincipalSource) -> Server[Any]:
    """The MCP server: every request is handed to the gateway with the principal ``principal()`` returns."""

    async def on_list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        request_id = new_request_id()
        caller = _authenticate(gateway, principal, request_id, "tools/list")
        try:
            return types.ListToolsResult(tools=gateway.list_tools(caller, request_id))
        except MCPError:
            raise
        except Exception as exc:
            logger.exception("internal error in tools/list (request %s)", request_id)
            raise _internal_error(request_id) from exc

    async def on_call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        request_id = new_request_id()
        caller = _authenticate(gateway, principal, request_id, "tools/call", tool=params.name)
        # Only a caller that supplied a progressToken gets progress (and so a streamed model answer).
        progress = ctx.session.report_progress if _progress_token(ctx) is not None else None
        try:
            return await gateway.call_tool(caller, params.name, params.arguments, request_id, progress)
        except MCPError:
            raise
        except Exception as exc:
            logger.exception("internal error in tools/call (request %s)", request_id)
            raise _internal_error(request_id) from exc

    def input_schema(name: str) -> Mapping[str, Any] | None:
        # Lets the SDK check Mcp-Param-* headers without re-running tools/list (and its audit row) per call.
        try:
            caller = principal()
        except GatewayError:
            return None
        tool = gateway.catalogs.lookup(caller.catalog, name)
        if tool is None or not gateway.policy.check(caller.subject, caller.roles, caller.catalog, name).allowed:
            return None
        return tool.definition.input_schema

    return Server(
        "mcp-gateway",
        version=__version__,
        instructions="A governed gateway: tools are filtered per caller, and every call is authorised and audited.",
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
        get_tool_input_schema=input_schema,
    )


def _internal_error(request_id: str) -> MCPError:
    # The SDK's legacy mode would send str(exc) to the caller; nothing internal leaves the gateway.
    return MCPError(types.INTERNAL_ERROR, "Internal error", {"code": "internal_error", "request_id": request_id})


def _progress_token(ctx: ServerRequestContext[Any]) -> str | int | None:
    meta: Mapping[str, Any] = ctx.meta or {}
    token = meta.get("progress_token", meta.get("progressToken"))
    return token if isinstance(token, str | int) and not isinstance(token, bool) else None


def _authenticate(
    gateway: Gateway, principal: PrincipalSource, request_id: str, method: str, tool: str | None = None
) -> Principal:
    try:
        return principal()
    except UnauthenticatedError as exc:
        try:
            gateway.audit.record(
                AuditEntry(
                    event=method,
                    decision="deny",
                    outcome=exc.code,
                    request_id=request_id,
                    trace_id=current_trace_id(),
                    tool=tool,
                    rule="identity",
                    detail={"error": str(exc)},
                )
            )
        except GatewayError as audit_exc:
            logger.error("audit unavailable while refusing request %s: %s", request_id, audit_exc)
        raise to_mcp_error(exc, request_id) from exc


def _freeze_startup_heap() -> None:
    """Exempt everything built at start-up from the cyclic garbage collector before serving.

    Modules, SQLAlchemy metadata, pydantic and JSON Schema validators make up most of the heap and live as long
    as the process; without this every full collection walks them again (``bench/``: GC took 36 µs per call,
    7 µs after freezing, and one full collection is a pause of tens of milliseconds).
    """
    gc.collect()
    gc.freeze()


# -- HTTP -------------------------------------------------------------------------------------------------


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
        try:
            return origin_of(origin) in self.allowed
        except ValueError:
            return False


class _SseEndpoint:
    """GET /sse: one SSE connection served by the MCP server loop."""

    def __init__(self, server: Server[Any], transport: SseServerTransport) -> None:
        self.server = server
        self.transport = transport

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with contextlib.AsyncExitStack() as stack:
            try:
                streams = await stack.enter_async_context(self.transport.connect_sse(scope, receive, send))
            except ValueError:
                return  # the SDK already answered 403/421 for a bad Host or Origin
            read_stream, write_stream = streams
            await self.server.run(read_stream, write_stream, self.server.create_initialization_options())


def _resource_url(settings: Settings) -> str:
    # identity.audience is validated as a normalised http(s) URL: the resource tokens are issued for.
    return settings.identity.audience


def _security(settings: Settings) -> tuple[TransportSecuritySettings, frozenset[str]]:
    http = settings.http
    base = urlsplit(http.base_url)
    hosts = {f"{http.host}:{http.port}", base.netloc, "127.0.0.1:*", "localhost:*", "[::1]:*"}
    origins = {origin_of(http.base_url), *(origin_of(origin) for origin in http.allowed_origins)}
    if http.host in ("127.0.0.1", "localhost", "::1"):
        origins |= {f"http://127.0.0.1:{http.port}", f"http://localhost:{http.port}"}
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=sorted(hosts),
        allowed_origins=sorted(origins),
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
    sse = SseServerTransport("/messages/", security_settings=security)
    resource = _resource_url(settings)
    metadata_url = build_resource_metadata_url(AnyHttpUrl(resource))
    servers = settings.http.authorization_servers or (settings.identity.issuer,)

    def guard(app: ASGIApp) -> ASGIApp:
        return RequireAuthMiddleware(app, required_scopes=[], resource_metadata_url=metadata_url)

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
        ready, reason = gateway.ready()
        return JSONResponse({"status": "ready" if ready else "unavailable", "reason": reason}, 200 if ready else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run(), _reloading(gateway), _checkpointing(settings, checkpointer):
            yield
        await gateway.aclose()

    routes: list[Route | Mount] = [
        Route("/mcp", endpoint=guard(StreamableHTTPASGIApp(manager))),
        Route("/sse", endpoint=guard(_SseEndpoint(server, sse)), methods=["GET"]),
        Mount("/messages/", app=guard(sse.handle_post_message)),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route(urlsplit(str(metadata_url)).path, protected_resource_metadata, methods=["GET", "OPTIONS"]),
    ]
    middleware = [
        Middleware(OriginGuard, allowed=origins),
        Middleware(AuthenticationMiddleware, backend=BearerAuthBackend(verifier)),
        Middleware(AuthContextMiddleware),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


@contextlib.asynccontextmanager
async def _reloading(gateway: Gateway) -> AsyncIterator[None]:
    """Check policy and catalogs for changes in the background while serving."""
    interval = gateway.settings.policy_reload_interval

    async def loop() -> None:
        while True:
            await anyio.sleep(interval)
            try:
                # Off the event loop: compiling a large policy must not stall calls in flight.
                report = await anyio.to_thread.run_sync(gateway.reload)
            except GatewayError as exc:
                logger.error("reload check failed: %s", exc)
                continue
            for error in report.errors:
                logger.error("reload refused, last good version stays in force: %s", error)

    async with anyio.create_task_group() as group:
        group.start_soon(loop)
        try:
            yield
        finally:
            group.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def _checkpointing(settings: Settings, checkpointer: Checkpointer | None) -> AsyncIterator[None]:
    """Sign the chain head at start, every ``audit.checkpoint_interval`` seconds, and at shutdown."""
    if checkpointer is None:
        yield
        return
    checkpointer.sign_now()
    async with checkpointer.running(settings.audit.checkpoint_interval):
        yield


# -- stdio ------------------------------------------------------------------------------------------------


def stdio_principal(verifier: JwtVerifier, environ: Mapping[str, str] = os.environ) -> PrincipalSource:
    """A principal source for stdio: the token from ``MCP_GATEWAY_TOKEN`` or the file named by
    ``MCP_GATEWAY_TOKEN_FILE`` (re-read each time, so a rotated file takes effect), verified on every request."""

    def current() -> Principal:
        token = environ.get(TOKEN_ENV)
        token_file = environ.get(TOKEN_FILE_ENV)
        if not token and token_file:
            try:
                token = Path(token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise UnauthenticatedError(f"{TOKEN_FILE_ENV}: cannot read {token_file}: {exc.strerror}") from exc
        if not token:
            raise UnauthenticatedError(f"no token: set {TOKEN_ENV} or {TOKEN_FILE_ENV}")
        return verifier.verify(token)

    return current


async def serve_stdio(settings: Settings) -> None:
    """Serve one client over stdin/stdout until it disconnects."""
    telemetry = setup_telemetry(settings)
    verifier = build_verifier(settings)
    gateway = build_gateway(settings)
    checkpointer = build_checkpointer(settings, gateway)
    server = build_server(gateway, stdio_principal(verifier))
    _freeze_startup_heap()
    try:
        async with (
            stdio_server() as (read_stream, write_stream),
            _reloading(gateway),
            _checkpointing(settings, checkpointer),
        ):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        await gateway.aclose()
        gateway.audit.close()
        telemetry.shutdown()


async def run_http(settings: Settings) -> None:
    """Serve HTTP with uvicorn on ``settings.http.host:port``."""
    import uvicorn

    telemetry = setup_telemetry(settings)
    verifier = build_verifier(settings)
    gateway = build_gateway(settings)
    app = build_app(settings, gateway, verifier, build_checkpointer(settings, gateway))
    config = uvicorn.Config(app, host=settings.http.host, port=settings.http.port, log_level="warning")
    _freeze_startup_heap()
    try:
        await uvicorn.Server(config).serve()
    finally:
        gateway.audit.close()
        telemetry.shutdown()
