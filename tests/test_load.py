"""Concurrent sessions against a real gateway process: nothing lost, nothing let through, one chain.

Bounded: 8 sessions x 40 calls over loopback, marked slow (CI runs it with `make test-slow`).
"""

from __future__ import annotations

import itertools

import anyio
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from mcp_gateway.audit.log import GENESIS, AuditLog, record_hash
from tests.conftest import HttpGateway

SESSIONS = 8
CALLS = 40

pytestmark = pytest.mark.slow


async def test_concurrent_sessions_lose_no_audit_row_and_keep_one_chain(http_gateway: HttpGateway) -> None:
    deployment = http_gateway.deployment
    outcomes: dict[str, int] = {"ok": 0, "refused": 0}

    async def session(index: int) -> None:
        token = deployment.mint(f"agent-{index}", ("support",), "internal")
        mode = "legacy" if index % 2 else "2026-07-28"
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
            Client(streamable_http_client(f"{http_gateway.url}/mcp", http_client=http), mode=mode) as client,
        ):
            await client.list_tools()
            for call in range(CALLS):
                if call % 4 == 3:
                    with pytest.raises(MCPError):
                        await client.call_tool("hr.salary_lookup", {"employee_id": "e-7"})
                    outcomes["refused"] += 1
                else:
                    result = await client.call_tool("crm.customer_lookup", {"customer_id": "c-100"})
                    assert not result.is_error
                    outcomes["ok"] += 1

    with anyio.fail_after(240):
        async with anyio.create_task_group() as group:
            for index in range(SESSIONS):
                group.start_soon(session, index)

    assert outcomes == {"ok": SESSIONS * CALLS * 3 // 4, "refused": SESSIONS * CALLS // 4}
    log = AuditLog(f"sqlite:///{deployment.database}")
    rows = list(log.iter_rows())
    log.close()
    calls = [row for row in rows if row["event"].startswith("tools/call") and row["subject"].startswith("agent-")]
    # Allowed calls write a decision row and an outcome row; refused calls one row.
    assert len(calls) == outcomes["ok"] * 2 + outcomes["refused"]
    assert sum(row["event"] == "tools/list" for row in rows) == SESSIONS
    assert rows[0]["prev_hash"] == GENESIS
    for earlier, later in itertools.pairwise(rows):
        assert later["prev_hash"] == earlier["hash"]
    assert all(record_hash(row) == row["hash"] for row in rows)
