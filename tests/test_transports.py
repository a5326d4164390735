"""End to end with the real `mcp` client over stdio, SSE and streamable HTTP (both protocol modes)."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.errors import UNAUTHENTICATED
from tests.conftest import API_KEY, Deployment, ExampleApi, HttpGateway, make_deployment
from tests.raw_mcp import raw_stdio

INTERNAL_VISIBLE = ["crm.customer_lookup", "crm.search", "tickets.create"]
PARTNER_VISIBLE = ["orders.status", "products.list"]

TRANSPORTS = [
    pytest.param("stdio", "legacy", id="stdio-legacy"),
    pytest.param("stdio", "2026-07-28", id="stdio-2026"),
    pytest.param("sse", "legacy", id="sse-legacy"),
    pytest.param("sse", "2026-07-28", id="sse-2026"),
    pytest.param("streamable-http", "legacy", id="http-legacy"),
    pytest.param("streamable-http", "2026-07-28", id="http-2026"),
]


@asynccontextmanager
async def connect(transport: str, mode: str, deployment: Deployment, token: str) -> AsyncIterator[Client]:
    base = f"http://127.0.0.1:{deployment.port}"
    if transport == "stdio":
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "mcp_gateway", "serve", "--transport", "stdio"],
            env={**deployment.env(), "MCP_GATEWAY_TOKEN": token},
            cwd=str(deployment.root),
        )
        async with Client(params, mode=mode, read_timeout_seconds=20) as client:
            yield client
    elif transport == "sse":
        headers = {"Authorization": f"Bearer {token}"}
        async with Client(sse_client(f"{base}/sse", headers=headers), mode=mode, read_timeout_seconds=20) as client:
            yield client
    else:
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
            Client(
                streamable_http_client(f"{base}/mcp", http_client=http), mode=mode, read_timeout_seconds=20
            ) as client,
        ):
            yield client


async def refused(client: Client, name: str, arguments: dict[str, Any]) -> MCPError:
    with pytest.raises(MCPError) as caught:
        await client.call_tool(name, arguments)
    return caught.value


@pytest.mark.parametrize(("transport", "mode"), TRANSPORTS)
async def test_each_transport_filters_catalogs_calls_backends_and_audits(
    transport: str, mode: str, http_gateway: HttpGateway, example_api: ExampleApi
) -> None:
    deployment = http_gateway.deployment
    internal = deployment.mint("alice", ("support",), "internal")
    partner = deployment.mint("acme-bot", ("partner",), "partner")

    async with connect(transport, mode, deployment, internal) as client:
        assert sorted(tool.name for tool in (await client.list_tools()).tools) == INTERNAL_VISIBLE
        result = await client.call_tool("crm.customer_lookup", {"customer_id": "c-100"})
        assert not result.is_error
        assert result.structured_content == {"id": "c-100", "name": "Ada Lovelace", "tier": "gold", "city": "London"}
        hidden = await refused(client, "hr.salary_lookup", {"employee_id": "e-7"})
        unknown = await refused(client, "no.such_tool", {"employee_id": "e-7"})
        other_catalog = await refused(client, "orders.status", {"order_id": "o-1"})

    # A tool the caller may not call is indistinguishable from one that does not exist.
    for error in (hidden, unknown, other_catalog):
        assert (error.code, error.message, set(error.data)) == (unknown.code, unknown.message, {"code", "request_id"})
        assert error.data["code"] == "unknown_tool"

    # The backend saw the server-side credential and nothing of the caller's token.
    last = [request for request in example_api.seen() if request["path"] == "/customers/c-100"][-1]
    assert last["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert all(internal not in value and internal.split(".")[1] not in value for value in last["headers"].values())

    async with connect(transport, mode, deployment, partner) as client:
        assert sorted(tool.name for tool in (await client.list_tools()).tools) == PARTNER_VISIBLE
        result = await client.call_tool("orders.status", {"order_id": "o-1"})
        assert result.structured_content == {"id": "o-1", "status": "shipped", "eta": "2026-12-01"}
        denied = await refused(client, "orders.cancel", {"order_id": "o-1"})
        assert denied.data["code"] == "unknown_tool"
        assert (await refused(client, "crm.customer_lookup", {"customer_id": "c-100"})).message == unknown.message

    log = AuditLog(f"sqlite:///{deployment.database}")
    rows = [(row["event"], row["subject"], row["tool"], row["decision"], row["outcome"]) for row in log.iter_rows()]
    log.close()
    assert ("tools/list", "alice", None, "allow", "ok") in rows
    assert ("tools/call", "alice", "crm.customer_lookup", "allow", "started") in rows
    assert ("tools/call.result", "alice", "crm.customer_lookup", "allow", "ok") in rows
    assert ("tools/call", "alice", "hr.salary_lookup", "deny", "unknown_tool") in rows
    assert ("tools/call", "alice", "no.such_tool", "deny", "unknown_tool") in rows
    assert ("tools/call", "acme-bot", "orders.cancel", "deny", "unknown_tool") in rows
    assert ("tools/call.result", "acme-bot", "orders.status", "allow", "ok") in rows
    # One listing each: the SDK's 2026-07-28 HTTP path re-runs tools/list per call unless the gateway hands it
    # get_tool_input_schema, which would write a listing row per call.
    listings = [row for row in rows if row[0] == "tools/list"]
    assert [row[1] for row in listings] == ["alice", "acme-bot"]


async def test_stdio_token_that_expires_mid_session_stops_working(
    tmp_path: Any, example_api: ExampleApi, dev_key: Any
) -> None:
    deployment = make_deployment(tmp_path / "d", example_api, dev_key, identity={"leeway": 0})
    token_file = tmp_path / "token"
    token_file.write_text(deployment.mint("alice", ("support",), "internal"))
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_gateway", "serve", "--transport", "stdio"],
        env={**deployment.env(), "MCP_GATEWAY_TOKEN_FILE": str(token_file)},
        cwd=str(deployment.root),
    )
    async with Client(params, mode="legacy", read_timeout_seconds=20) as client:
        await client.list_tools()  # the process is up: its start-up time no longer eats into the short token
        short = deployment.mint("alice", ("support",), "internal", ttl=5)
        token_file.write_text(short)
        assert (await client.call_tool("crm.search", {"query": "ada"})).structured_content is not None
        # The verifier runs in the gateway's process, so its clock cannot be injected from here: wait for the
        # token's real expiry (at most ttl + 1.1 s) without blocking the loop that reads the server's pipes.
        await anyio.sleep(max(0.0, deployment.key_expiry(short) - time.time() + 1.1))
        with pytest.raises(MCPError) as caught:
            await client.call_tool("crm.search", {"query": "ada"})
    assert caught.value.code == UNAUTHENTICATED
    assert caught.value.data["code"] == "unauthenticated"


async def test_stdio_without_a_token_refuses_every_request(deployment: Deployment) -> None:
    async with connect("stdio", "legacy", deployment, "") as client:
        with pytest.raises(MCPError) as listed:
            await client.list_tools()
        with pytest.raises(MCPError) as called:
            await client.call_tool("crm.search", {"query": "ada"})
    assert listed.value.code == called.value.code == UNAUTHENTICATED


async def test_running_gateway_picks_up_policy_edits_and_keeps_last_good_on_a_broken_file(
    http_gateway: HttpGateway,
) -> None:
    deployment = http_gateway.deployment
    token = deployment.mint("alice", ("support",), "internal")
    policy = deployment.policies / "internal.csv"
    original = policy.read_text()

    async def visible() -> list[str]:
        async with connect("streamable-http", "2026-07-28", deployment, token) as client:
            return [tool.name for tool in (await client.list_tools(cache_mode="bypass")).tools]

    async def wait_for(predicate: Any) -> list[str]:
        with anyio.fail_after(10):
            while not predicate(tools := await visible()):
                await anyio.sleep(0.1)
        return tools

    assert "hr.salary_lookup" not in await visible()
    policy.write_text(original + "p, user:alice, internal, hr.salary_lookup, call, allow\n")
    await wait_for(lambda tools: "hr.salary_lookup" in tools)

    policy.write_text(original + "p, user:alice, internal, hr.salary_lookup, call, allow\np, broken\n")
    log = AuditLog(f"sqlite:///{deployment.database}")
    with anyio.fail_after(10):
        while not any(row["outcome"] == "rejected" for row in log.iter_rows()):
            await anyio.sleep(0.1)
    assert "hr.salary_lookup" in await visible(), "the last good policy stays in force"
    events = [(row["event"], row["outcome"]) for row in log.iter_rows() if row["event"].endswith(".reload")]
    log.close()
    assert events[:2] == [("policy.reload", "ok"), ("policy.reload", "rejected")]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({"MCP_GATEWAY_TOKEN": "expired"}, "MCP_GATEWAY_TOKEN: expired: token expired", id="expired"),
        pytest.param({}, "MCP_GATEWAY_TOKEN or MCP_GATEWAY_TOKEN_FILE: no token:", id="no-token"),
        pytest.param(
            {"MCP_GATEWAY_TOKEN_FILE": "missing"},
            "MCP_GATEWAY_TOKEN_FILE ({file}): unreadable: cannot read {file}: No such file or directory",
            id="missing-file",
        ),
        pytest.param(
            {"MCP_GATEWAY_TOKEN_FILE": "empty"}, "MCP_GATEWAY_TOKEN_FILE ({file}): no token:", id="empty-file"
        ),
    ],
)
def test_stdio_refusal_names_the_variable_and_the_reason_on_stderr(
    deployment: Deployment, tmp_path: Any, env: dict[str, str], expected: str
) -> None:
    token = deployment.mint("alice", ("support",), "internal", ttl=-120)
    token_file = tmp_path / "token"
    if env.get("MCP_GATEWAY_TOKEN_FILE") == "empty":
        token_file.write_text("\n")
    values = {name: token if value == "expired" else str(token_file) for name, value in env.items()}
    # The test's own environment must not lend the process a token.
    values = {"MCP_GATEWAY_TOKEN": "", "MCP_GATEWAY_TOKEN_FILE": "", **values}
    with raw_stdio(deployment, **values) as session:
        session.initialize()
        session.send({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert session.receive()["error"]["code"] == UNAUTHENTICATED
        stderr = session.close()
    assert expected.format(file=token_file) in stderr
    assert token not in stderr
