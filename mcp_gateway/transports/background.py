"""The loops a serving gateway runs beside its transport: hot reload checks and signed checkpoints."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread

from mcp_gateway.audit.checkpoint import Checkpointer
from mcp_gateway.errors import GatewayError
from mcp_gateway.gateway import Gateway

__all__ = ["checkpointing", "reloading"]

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def reloading(gateway: Gateway) -> AsyncIterator[None]:
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
async def checkpointing(checkpointer: Checkpointer | None, interval: float) -> AsyncIterator[None]:
    """Sign the chain head at start, every ``interval`` seconds, and at shutdown."""
    if checkpointer is None:
        yield
        return
    checkpointer.sign_now()
    async with checkpointer.running(interval):
        yield
