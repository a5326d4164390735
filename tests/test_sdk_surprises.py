"""Behaviour of the `mcp` 2.x SDK that the gateway's design depends on, pinned so an upgrade that changes it
fails here first (see docs/architecture.md, "Surprises pinned in tests")."""

from __future__ import annotations

from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp.client import Client
from mcp.server.auth.middleware.bearer_auth import RequireAuthMiddleware
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError

from mcp_gateway.config import load_settings
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import Principal
from mcp_gateway.server import build_gateway
from mcp_gateway.transports.handlers import build_server
from tests.conftest import Deployment

MODES = ["legacy", "2026-07-28"]
ALICE = Principal("alice", ("support",), "internal", (), None, "test", 2**40)


async def _list(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[types.Tool(name="t", input_schema={"type": "object"})])


async def _boom(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    raise RuntimeError("secret internal detail")


@pytest.mark.parametrize("mode", MODES)
async def test_sdk_low_level_server_leaks_exception_text_in_legacy_mode(mode: str) -> None:
    server: Server[Any] = Server("bare", on_list_tools=_list, on_call_tool=_boom)
    async with Client(server, mode=mode) as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("t", {})
    leaked = caught.value.message == "secret internal detail"
    assert leaked is (mode == "legacy"), "SDK changed: revisit server.on_call_tool's catch-all and this note"


async def _echo(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=params.name)])


async def test_sdk_low_level_server_serves_calls_to_unlisted_tools_unvalidated() -> None:
    server: Server[Any] = Server("bare", on_list_tools=_list, on_call_tool=_echo)
    async with Client(server, mode="2026-07-28") as client:
        result = await client.call_tool("never-listed", {"anything": ["goes"]})
    assert not result.is_error, "SDK now filters unlisted tools; the gateway's own check stays regardless"


@pytest.fixture
async def gateway(deployment: Deployment) -> Any:
    gateway = build_gateway(load_settings(deployment.config))
    yield gateway
    await gateway.aclose()
    gateway.audit.close()


@pytest.mark.parametrize("mode", MODES)
async def test_gateway_never_leaks_internal_errors(
    gateway: Gateway, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> types.CallToolResult:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(gateway, "call_tool", broken)
    async with Client(build_server(gateway, lambda: ALICE), mode=mode) as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("crm.search", {"query": "x"})
    assert caught.value.code == types.INTERNAL_ERROR
    assert caught.value.message == "Internal error"
    assert "secret" not in str(caught.value.data)
    assert caught.value.data["code"] == "internal_error"


def test_sdk_parses_duplicate_json_keys_last_one_wins() -> None:
    # Why the transports check raw bytes first (transports/wire.py): the SDK keeps the last of two members, so a
    # backend or log reader parsing the same bytes first-wins would see another call.
    raw = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":"first","a":"last"}}}'
    message = types.jsonrpc_message_adapter.validate_json(raw, by_name=False)
    assert isinstance(message, types.JSONRPCRequest)
    assert message.params is not None
    assert message.params["arguments"] == {"a": "last"}, "SDK now refuses or keeps the first: revisit wire.py"


async def test_sdk_bearer_requirement_names_invalid_token_even_without_credentials() -> None:
    # RFC 6750 §3.1 says no error code then; transports/http.py answers that case itself (_RequireBearer).
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("never reached without a token")

    guarded = RequireAuthMiddleware(app, required_scopes=[])
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"], "SDK fixed: _RequireBearer can go"


async def test_sdk_answers_an_unknown_protocol_version_in_a_session_about_the_meta_envelope() -> None:
    # The manager sends every MCP-Protocol-Version it cannot handshake to the 2026-07-28 entry, whose first
    # complaint is the missing envelope: transports/wire.py's ProtocolVersionGuard answers such a header itself.
    server: Server[Any] = Server("bare", on_list_tools=_list, on_call_tool=_echo)
    manager = StreamableHTTPSessionManager(app=server, json_response=True)
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }
    async with manager.run():
        transport = httpx.ASGITransport(app=StreamableHTTPASGIApp(manager))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            opened = await client.post("/mcp", json=initialize, headers=headers)
            session = {**headers, "Mcp-Session-Id": opened.headers["mcp-session-id"]}
            listed = await client.post(
                "/mcp",
                json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                headers={**session, "MCP-Protocol-Version": "1999-01-01"},
            )
    assert listed.status_code == 400
    error = listed.json()["error"]
    assert (error["code"], "params._meta" in error["message"]) == (types.INVALID_PARAMS, True), "SDK names it now"


async def test_sdk_sse_post_to_a_session_whose_stream_just_closed_raises_after_answering_202() -> None:
    """The SDK forgets an SSE session only when its server loop ends; a message posted after the client left but
    before that is answered 202 and then raises ``ClosedResourceError`` out of the ASGI app (uvicorn logs a
    traceback per message). ``transports/sse.py`` catches it; if this stops raising, that catch can go."""
    import json

    import anyio
    from mcp.server.sse import SseServerTransport

    transport = SseServerTransport("/messages/")
    left = anyio.Event()
    found = anyio.Event()
    session: list[str] = []

    async def stream_receive() -> dict[str, Any]:
        await left.wait()
        return {"type": "http.disconnect"}

    async def stream_send(message: dict[str, Any]) -> None:
        body = message.get("body", b"")
        if b"session_id=" in body and not session:
            session.append(body.split(b"session_id=", 1)[1].split(b"\r", 1)[0].decode().strip())
            found.set()

    message = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    posted: list[dict[str, Any]] = []

    async def post_receive() -> dict[str, Any]:
        return {"type": "http.request", "body": json.dumps(message).encode(), "more_body": False}

    async def post_send(reply: dict[str, Any]) -> None:
        posted.append(reply)

    get = {"type": "http", "method": "GET", "path": "/sse", "headers": [], "query_string": b"", "root_path": ""}
    with anyio.fail_after(5):
        async with transport.connect_sse(get, stream_receive, stream_send) as (read_stream, write_stream):
            await found.wait()
            left.set()  # the client goes away
            with pytest.raises(anyio.EndOfStream):
                await read_stream.receive()  # the transport has closed the session's stream
            post = {
                "type": "http",
                "method": "POST",
                "path": "/messages/",
                "headers": [(b"content-type", b"application/json")],
                "query_string": f"session_id={session[0]}".encode(),
                "root_path": "",
            }
            with pytest.raises(anyio.ClosedResourceError):
                await transport.handle_post_message(post, post_receive, post_send)
            await write_stream.aclose()  # as the server loop does when it ends
            await read_stream.aclose()
    assert posted[0]["status"] == 202, "the SDK answers before it hands the message on"
