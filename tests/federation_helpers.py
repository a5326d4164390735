"""Shared set-up of the federation tests: a deployment whose internal catalog lists the test upstream."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import yaml

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.catalog import load_catalogs
from mcp_gateway.config import load_settings
from mcp_gateway.federation.pinning import pin_tools
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import Principal
from mcp_gateway.operators import Operator
from mcp_gateway.server import build_gateway
from mcp_gateway.transports.background import federating
from tests.conftest import ROOT, Deployment

UPSTREAM = ROOT / "tests" / "upstream_server.py"
ALICE = Principal("alice", ("support",), "internal", (), None, "test", 2**40)
PARTNER = Principal("acme-bot", ("partner",), "partner", (), None, "test", 2**40)
ADMIN = Operator("pat", "jti-1", ("pwd", "otp"), frozenset({"policy-admin"}))


def add_server(deployment: Deployment, record: Path, catalog: str = "internal", **server: Any) -> dict[str, Any]:
    """List the test upstream as ``files`` (stdio unless overridden) and let support call its tools."""
    path = deployment.root / "catalogs" / f"{catalog}.yaml"
    data = yaml.safe_load(path.read_text())
    spec: dict[str, Any] = {
        "name": "files",
        "transport": "stdio",
        "command": [sys.executable, str(UPSTREAM)],
        "env": {"UPSTREAM_RECORD": str(record)},
        "refresh": 60,
        "timeout": 5,
    }
    spec.update(server)
    if spec["transport"] != "stdio":
        for key in ("command", "env"):
            spec.pop(key, None)
    data.setdefault("servers", []).append(spec)
    path.write_text(yaml.safe_dump(data))
    policy = deployment.policies / f"{catalog}.csv"
    role = "support" if catalog == "internal" else "partner"
    policy.write_text(policy.read_text() + f"p, role:{role}, {catalog}, files.*, call, allow\n")
    return spec


def seen(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


async def until(check: Callable[[], bool], timeout: float = 15, what: str = "condition") -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.05)


@asynccontextmanager
async def federated(deployment: Deployment) -> AsyncIterator[Gateway]:
    """The transport-free gateway of ``deployment`` with its upstream sessions running."""
    gateway = build_gateway(load_settings(deployment.config))
    try:
        async with federating(gateway):
            yield gateway
    finally:
        await gateway.aclose()
        gateway.audit.close()


def names(gateway: Gateway, principal: Principal = ALICE) -> list[str]:
    return [tool.name for tool in gateway.visible_tools(principal)]


def rows(gateway: Gateway, event: str | None = None) -> list[dict[str, Any]]:
    """The trail's rows (``detail`` parsed), of one event when given."""
    found = []
    for row in gateway.audit.iter_rows():
        if event is None or row["event"] == event:
            detail = row.get("detail")
            found.append({**row, "detail": json.loads(detail) if isinstance(detail, str) else detail or {}})
    return found


async def pin_all(deployment: Deployment, catalog: str = "internal", **options: Any) -> tuple[str, ...]:
    settings = load_settings(deployment.config)
    catalogs = load_catalogs(settings.catalogs_dir, settings.egress)
    log = AuditLog(settings.database_url)
    try:
        result = await pin_tools(
            log, settings.catalogs_dir, catalogs, settings.egress, ADMIN, catalog=catalog, **options
        )
    finally:
        log.close()
    return result.pinned
