"""The Prometheus endpoint's own listener: ``/metrics`` on ``metrics.host:metrics.port``, nothing else there.

It is not on the MCP port, so a scraper needs no bearer token and the MCP port gains no unauthenticated route;
the listener can be fenced on its own (loopback by default; firewall or ``IPAddressAllow`` when bound wider). When
``http.tls_*`` is set it serves with the same certificate, and under mutual TLS it asks the scraper for a client
certificate too. The text carries counts by catalog, outcome, reason, stage and configured names only
(``mcp_gateway.metrics``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcp_gateway.config import Settings
from mcp_gateway.metrics import GatewayMetrics
from mcp_gateway.transports.tls import uvicorn_tls_options

__all__ = ["MetricsServer", "metrics_app", "serving_metrics"]

_START_TIMEOUT = 10.0


def metrics_app(metrics: GatewayMetrics) -> Starlette:
    """``GET /metrics`` in the Prometheus text format; 404 elsewhere."""

    async def scrape(request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    return Starlette(routes=[Route("/metrics", scrape, methods=["GET"])])


class MetricsServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signals to the MCP server beside it, which stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving_metrics(settings: Settings, metrics: GatewayMetrics | None) -> AsyncIterator[None]:
    """Serve ``/metrics`` while the block runs (nothing when ``metrics`` is None). The listener is up before the
    block starts: a port that cannot be bound stops the start (uvicorn exits with status 3)."""
    if metrics is None:
        yield
        return
    config = uvicorn.Config(
        metrics_app(metrics),
        host=settings.metrics.host,
        port=settings.metrics.port,
        log_level="warning",
        lifespan="off",
        ws="none",
        **uvicorn_tls_options(settings.http),
    )
    server = MetricsServer(config)
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        with anyio.fail_after(_START_TIMEOUT):
            while not server.started:
                await anyio.sleep(0.01)
        try:
            yield
        finally:
            server.should_exit = True
