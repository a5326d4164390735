"""The gateway's own work per request, in-process (no transport), and where it goes.

``call``: ``Gateway.call_tool`` for the echo tool with the backend answered in-process, split into the time
spent committing audit rows (two per allowed call: the decision before the backend, the outcome after) and
everything else (catalog, policy, argument limits, hashing). Baseline: the bare server's handler body.

``list``: ``Gateway.list_tools`` for one caller over a 1,000-tool catalog (the policy shows it about 40 % of
them), warm (the per-caller view cached, as in a running gateway) and cold (first listing after a policy or
catalog change), each including its committed audit row. Target: <= 2 ms. Also the same listing end to end
through the SDK's in-memory client against a bare server publishing as many tools as the caller sees.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp.client import Client

from bench.common import ROLE, SUBJECT, make_deployment, median, percentile
from bench.servers import LocalEcho, bare_server, echo_result
from mcp_gateway.audit.log import new_request_id
from mcp_gateway.config import load_settings
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import Principal
from mcp_gateway.server import build_gateway
from mcp_gateway.transports.handlers import build_server

CATALOG_TOOLS = 1_000
ARGUMENTS = {"message": "hello from the benchmark"}


class _TimedAudit:
    """Wraps ``AuditLog.append`` (the call path's way in) and ``record`` to add up the time spent committing rows."""

    def __init__(self, gateway: Gateway) -> None:
        self.spent = 0.0
        self.rows = 0
        self._record = gateway.audit.record
        self._append = gateway.audit.append
        gateway.audit.record = self.record  # type: ignore[method-assign]
        gateway.audit.append = self.append  # type: ignore[method-assign]

    async def append(self, entry: Any) -> str:
        started = time.perf_counter()
        try:
            written = await self._append(entry)
        finally:
            self.spent += time.perf_counter() - started
        self.rows += bool(written)
        return written

    def record(self, entry: Any) -> str:
        started = time.perf_counter()
        try:
            written = self._record(entry)
        finally:
            self.spent += time.perf_counter() - started
        self.rows += bool(written)  # a diagnostic filter answers "" for a row it dropped
        return written


def _principal() -> Principal:
    return Principal(SUBJECT, (ROLE,), "internal", (), None, "bench", int(time.time()) + 3600)


def local_echo_gateway(root: Path, filler_tools: int) -> Gateway:
    deployment = make_deployment(root, "http://127.0.0.1:9", filler_tools=filler_tools)
    gateway = build_gateway(load_settings(deployment.config))
    gateway.backends.use("http", LocalEcho())
    return gateway


async def timed_calls(gateway: Gateway, count: int) -> dict[str, float]:
    principal = _principal()
    audit = _TimedAudit(gateway)
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        result = await gateway.call_tool(principal, "echo", ARGUMENTS, new_request_id())
        latencies.append(time.perf_counter() - started)
        assert not result.is_error
    bare = []
    for _ in range(count):
        started = time.perf_counter()
        echo_result(ARGUMENTS)
        bare.append(time.perf_counter() - started)
    total = sum(latencies)
    return {
        "governed_p50_us": percentile(latencies, 50) * 1e6,
        "governed_p95_us": percentile(latencies, 95) * 1e6,
        "bare_handler_p50_us": percentile(bare, 50) * 1e6,
        "audit_rows_per_call": audit.rows / count,
        "audit_us_per_call": audit.spent / count * 1e6,
        "audit_share": audit.spent / total,
        "other_us_per_call": (total - audit.spent) / count * 1e6,
    }


def _listing(gateway: Gateway, count: int) -> dict[str, float]:
    principal = _principal()
    warm, cold = [], []

    async def listing() -> int:
        visible = len(await gateway.list_tools(principal, new_request_id()))
        for _ in range(count):
            started = time.perf_counter()
            await gateway.list_tools(principal, new_request_id())
            warm.append(time.perf_counter() - started)
        for _ in range(max(count // 10, 3)):
            gateway._visible.clear()  # what a policy or catalog reload does
            started = time.perf_counter()
            await gateway.list_tools(principal, new_request_id())
            cold.append(time.perf_counter() - started)
        return visible

    visible = asyncio.run(listing())
    return {
        "tools": CATALOG_TOOLS,
        "visible": visible,
        "warm_p50_ms": percentile(warm, 50) * 1000,
        "warm_p95_ms": percentile(warm, 95) * 1000,
        "cold_p50_ms": percentile(cold, 50) * 1000,
        "cold_p95_ms": percentile(cold, 95) * 1000,
    }


async def _listing_end_to_end(gateway: Gateway, count: int) -> dict[str, float]:
    """tools/list through the SDK (in-memory transport) for the governed and a bare server of equal size."""
    principal = _principal()
    # The bare server publishes as many tools as the caller sees, so both answers are the same size.
    visible = len(gateway.visible_tools(principal))
    servers = {"bare": bare_server(visible), "governed": build_server(gateway, lambda: principal)}
    figures: dict[str, float] = {}
    for name, server in servers.items():
        async with Client(server) as client:
            await client.list_tools(cache_mode="bypass")
            latencies = []
            for _ in range(count):
                started = time.perf_counter()
                await client.list_tools(cache_mode="bypass")
                latencies.append(time.perf_counter() - started)
        figures[f"{name}_p50_ms"] = percentile(latencies, 50) * 1000
    figures["ratio_p50"] = figures["governed_p50_ms"] / figures["bare_p50_ms"]
    return figures


def run(quick: bool = False, rounds: int = 3) -> dict[str, Any]:
    calls = 500 if quick else 2_000
    listings = 100 if quick else 300
    per_round: dict[str, list[dict[str, float]]] = {"call": [], "list": [], "list_end_to_end": []}
    with tempfile.TemporaryDirectory(prefix="mcp-gateway-bench-") as tmp:
        for index in range(rounds):
            gateway = local_echo_gateway(Path(tmp) / f"call-{index}", 0)
            per_round["call"].append(asyncio.run(timed_calls(gateway, calls)))
            gateway.audit.close()
            gateway = local_echo_gateway(Path(tmp) / f"list-{index}", CATALOG_TOOLS - 1)
            per_round["list"].append(_listing(gateway, listings))
            per_round["list_end_to_end"].append(asyncio.run(_listing_end_to_end(gateway, listings // 5)))
            gateway.audit.close()
    result: dict[str, Any] = {"benchmark": "gateway", "quick": quick, "rounds": rounds}
    for name, rows in per_round.items():
        result[name] = {key: median([row[key] for row in rows]) for key in rows[0]}
    return result
