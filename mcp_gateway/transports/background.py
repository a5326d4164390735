"""The loops a serving gateway runs beside its transport: hot reload checks and signed checkpoints.

Each loop runs its work in a worker thread (compiling a large policy or fsyncing a checkpoint must not stall
calls in flight), logs a failure and carries on: a reload or checkpoint that fails now is tried again next time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.to_thread

from mcp_gateway.audit.checkpoint import Checkpointer
from mcp_gateway.errors import GatewayError
from mcp_gateway.gateway import Gateway

__all__ = ["checkpointing", "federating", "reloading"]

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def _every(interval: float, work: Callable[[], object], what: str) -> AsyncIterator[None]:
    """Run ``work`` off the event loop every ``interval`` seconds while the block runs."""

    async def loop() -> None:
        while True:
            await anyio.sleep(interval)
            try:
                await anyio.to_thread.run_sync(work)
            except (GatewayError, OSError) as exc:
                logger.error("%s failed: %s", what, exc)

    async with anyio.create_task_group() as group:
        group.start_soon(loop)
        try:
            yield
        finally:
            group.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def reloading(gateway: Gateway) -> AsyncIterator[None]:
    """Check policy and catalogs for changes in the background while serving."""

    def check() -> None:
        for error in gateway.reload().errors:
            logger.error("reload refused, last good version stays in force: %s", error)

    async with _every(gateway.settings.policy_reload_interval, check, "reload check"):
        yield


@contextlib.asynccontextmanager
async def checkpointing(checkpointer: Checkpointer | None, interval: float) -> AsyncIterator[None]:
    """Sign the chain head at start, every ``interval`` seconds, and once more at shutdown."""
    if checkpointer is None:
        yield
        return
    checkpointer.sign_now()
    try:
        async with _every(interval, checkpointer.sign_now, "checkpoint"):
            yield
    finally:
        try:
            checkpointer.sign_now()
        except (GatewayError, OSError) as exc:
            logger.error("shutdown checkpoint failed: %s", exc)


@contextlib.asynccontextmanager
async def federating(gateway: Gateway) -> AsyncIterator[None]:
    """Keep the upstream MCP sessions up while serving, following catalog reloads and edited pin files."""
    federation = gateway.federation
    if federation is None:
        yield
        return
    async with anyio.create_task_group() as group:
        await federation.start(group, gateway.loaded_catalogs)

        async def follow() -> None:
            seen = (gateway.loaded_catalogs.version, federation.pins_fingerprint())
            while True:
                await anyio.sleep(gateway.settings.policy_reload_interval)
                now = (gateway.loaded_catalogs.version, federation.pins_fingerprint())
                if now != seen:
                    seen = now
                    await federation.sync(gateway.loaded_catalogs)

        group.start_soon(follow)
        try:
            yield
        finally:
            await federation.aclose()
            group.cancel_scope.cancel()
