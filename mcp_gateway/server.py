"""Wiring: the only module that assembles every component, and the two ways to serve.

``build_gateway`` assembles the transport-free :class:`~mcp_gateway.gateway.Gateway` and refuses to start if
policy, catalogs or the audit trail cannot be established. ``serve_stdio`` and ``run_http`` build everything a
serving process needs and hand it to a transport (:mod:`mcp_gateway.transports`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcp_gateway import __version__
from mcp_gateway.audit.checkpoint import Checkpointer, Signer
from mcp_gateway.audit.log import AuditEntry, AuditLog, new_request_id
from mcp_gateway.backends import Backend, Backends
from mcp_gateway.backends.http import HttpUpstream
from mcp_gateway.backends.upstream import UpstreamBackend
from mcp_gateway.breakglass import BreakGlass
from mcp_gateway.config import Settings
from mcp_gateway.configfile import startup_detail
from mcp_gateway.federation import Federation
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import JwtVerifier
from mcp_gateway.keyring import load_keyring
from mcp_gateway.policy import PolicyEngine
from mcp_gateway.ratelimit import RateLimiter, open_bucket_store
from mcp_gateway.telemetry import Telemetry, current_trace_id, setup_telemetry, tracer
from mcp_gateway.transports import stdio
from mcp_gateway.transports.handlers import freeze_startup_heap
from mcp_gateway.transports.http import build_app

if TYPE_CHECKING:  # imported when metrics are served (run_http): prometheus_client is not needed otherwise
    from mcp_gateway.metrics import GatewayMetrics

__all__ = [
    "build_backends",
    "build_checkpointer",
    "build_gateway",
    "build_verifier",
    "run_http",
    "serve_stdio",
    "watch",
]


def build_verifier(settings: Settings) -> JwtVerifier:
    """The JWT verifier, with keys from the JWKS file or (allowlisted) URL, kept current while serving
    (``keyring``: the transports run ``verifier.keyring.running()``).

    Raises:
        ConfigError: the JWKS cannot be loaded.
    """
    return JwtVerifier(settings.identity, load_keyring(settings.identity, settings.egress))


def build_backends(settings: Settings) -> Backends:
    """One backend per kind of tool: REST (built now) and model (built on the first model call)."""
    http = HttpUpstream(settings.egress)

    def models() -> Backend:
        # Imported on first use: importing the OpenAI client costs about a second of start-up.
        from mcp_gateway.backends.model import ModelRouter

        return ModelRouter(settings.egress)

    return Backends({"http": lambda: http, "model": models})


def build_gateway(settings: Settings, metrics: GatewayMetrics | None = None) -> Gateway:
    """Load policy, catalogs and the audit trail; refuse to start if any of them cannot be established. With
    ``metrics``, every call and every audit transaction is counted there.

    Raises:
        ConfigError: a policy or catalog does not load.
        UnavailableError: the audit database (or, with ``limits.store: database``, the bucket database) cannot be
            opened.
    """
    policy = PolicyEngine(settings.policies_dir)
    audit = AuditLog(
        settings.database_url,
        durability=settings.audit.durability,
        max_batch=settings.audit.max_batch,
        write_timeout=settings.audit.write_timeout,
    )
    breakglass = BreakGlass(settings.database_url, settings.breakglass, audit)
    if metrics is not None:
        audit.on_commit = metrics.audit_committed
    backends = build_backends(settings)
    limiter = RateLimiter(open_bucket_store(settings.limits, settings.database_url))
    gateway = Gateway(
        settings,
        audit=audit,
        policy=policy,
        backends=backends,
        limiter=limiter,
        breakglass=breakglass,
        metrics=metrics,
    )
    # Upstream MCP servers: sessions open once serving starts (transports.background.federating).
    federation = Federation(settings.catalogs_dir, settings.egress, audit)
    gateway.attach_federation(federation)
    backends.use("upstream", UpstreamBackend(federation))
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
                # The config in force on record: the file's digest and the effective settings, secrets redacted.
                detail={
                    "version": __version__,
                    "catalogs_digest": gateway.catalogs.version,
                    **startup_detail(settings),
                },
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


async def serve_stdio(settings: Settings) -> None:
    """Serve one client over stdin/stdout until it disconnects."""
    telemetry = setup_telemetry(settings)
    verifier = build_verifier(settings)
    gateway = build_gateway(settings)
    checkpointer = build_checkpointer(settings, gateway)
    try:
        await stdio.serve(gateway, verifier, checkpointer)
    finally:
        await gateway.aclose()
        gateway.audit.close()
        telemetry.shutdown()


def watch(metrics: GatewayMetrics, gateway: Gateway, verifier: JwtVerifier, telemetry: Telemetry) -> None:
    """Point the scrape-time metrics at the running components: breakers, the audit queue, spans, keys."""
    watched = metrics.watched
    watched.breaker_states = lambda: getattr(gateway.backends.built("model"), "breaker_states", dict)()
    watched.models = lambda: gateway.catalogs.models.entries.keys()
    watched.audit_queue = lambda: gateway.audit.queue_depth
    watched.dropped_spans = lambda: telemetry.dropped_spans
    watched.jwks_age = verifier.keyring.age
    watched.jwks_reads = lambda: verifier.keyring.reads
    verifier.on_refusal = metrics.auth_refused


async def run_http(settings: Settings) -> None:
    """Serve HTTP with uvicorn on ``settings.http.host:port`` (and ``/metrics`` on ``metrics.*`` when enabled)."""
    import uvicorn

    from mcp_gateway.metrics import GatewayMetrics
    from mcp_gateway.transports.guards import guarded_protocol
    from mcp_gateway.transports.metrics import serving_metrics
    from mcp_gateway.transports.tls import uvicorn_tls_options

    tls = uvicorn_tls_options(settings.http)  # a bad certificate or key stops the start here, named
    telemetry = setup_telemetry(settings)
    verifier = build_verifier(settings)
    metrics = GatewayMetrics() if settings.metrics.enabled else None
    gateway = build_gateway(settings, metrics)
    if metrics is not None:
        watch(metrics, gateway, verifier, telemetry)
    app = build_app(settings, gateway, verifier, build_checkpointer(settings, gateway))
    # The h11 protocol with the slow-client bounds (transports/guards.py); it serves no WebSocket upgrade.
    protocol = guarded_protocol(settings.http)
    config = uvicorn.Config(
        app, host=settings.http.host, port=settings.http.port, log_level="warning", http=protocol, ws="none", **tls
    )
    freeze_startup_heap()
    try:
        async with serving_metrics(settings, metrics):
            await uvicorn.Server(config).serve()
    finally:
        gateway.audit.close()
        telemetry.shutdown()
