"""Federation against a real upstream MCP server (a subprocess over stdio): pinning, drift, failures, limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from mcp_gateway.federation.pins import load_pins, tool_digest
from mcp_gateway.gateway import Gateway
from tests.conftest import Deployment
from tests.federation_helpers import ALICE, PARTNER, add_server, federated, names, pin_all, rows, seen, until


def error_code(result: Any) -> str:
    assert result.is_error
    return str(result.structured_content["error"]["code"])


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "upstream.jsonl"


async def up(gateway: Gateway) -> None:
    await until(lambda: "files.echo" in names(gateway), what="files.echo listed")


async def test_unpinned_tools_are_not_listed_and_calls_are_unknown(deployment: Deployment, record: Path) -> None:
    add_server(deployment, record)
    async with federated(deployment) as gateway:
        await until(lambda: gateway.upstreams()["internal/files"]["state"] == "up")
        assert not [name for name in names(gateway) if name.startswith("files.")]
        with pytest.raises(MCPError) as unknown:
            await gateway.call_tool(ALICE, "files.echo", {"text": "hi"}, "req-1")
        with pytest.raises(MCPError) as missing:
            await gateway.call_tool(ALICE, "files.nothing", {}, "req-2")
        assert unknown.value.error.message == missing.value.error.message
        assert unknown.value.error.code == missing.value.error.code
        # Each unpinned tool is on record once, however often it is listed.
        drift = rows(gateway, "catalog.drift")
        assert sorted(row["tool"] for row in drift) == sorted(f"files.{t['name']}" for t in _listed(record))
        assert all(row["detail"]["kind"] == "new" and row["detail"]["old_digest"] is None for row in drift)
    assert not [event for event in seen(record) if event["event"] == "call"]


def _listed(record: Path) -> list[dict[str, Any]]:
    import tests.upstream_server as upstream

    return upstream.tools()


async def test_pinned_call_goes_through_the_pipeline_with_two_audit_rows(deployment: Deployment, record: Path) -> None:
    add_server(deployment, record)
    assert "files.echo" in await pin_all(deployment)
    pins = load_pins(deployment.root / "catalogs", "internal")
    echo = pins.get("files", "echo")
    assert echo is not None
    # The whole wire object is pinned: fields no SDK model knows, _meta and icons included.
    assert echo.definition["xVendor"] == {"note": "a field no SDK model knows"}
    assert echo.definition["_meta"] == {"vendor/build": "1"}
    assert echo.definition["icons"]
    assert echo.digest == tool_digest(echo.definition)
    async with federated(deployment) as gateway:
        await up(gateway)
        result = await gateway.call_tool(ALICE, "files.echo", {"text": "hello"}, "req-3")
        assert not result.is_error
        assert result.structured_content == {"text": "hello"}
        # Schema validation against the pinned schema, before the upstream.
        refused = await gateway.call_tool(ALICE, "files.echo", {"text": 5}, "req-4")
        assert error_code(refused) == "invalid_arguments"
        calls = [row for row in rows(gateway) if row["request_id"] == "req-3"]
        assert [(row["event"], row["outcome"]) for row in calls] == [
            ("tools/call", "started"),
            ("tools/call.result", "ok"),
        ]
        assert calls[0]["tool"] == "files.echo"
        assert calls[0]["tool_digest"] == echo.digest
        assert calls[1]["detail"]["backend"]["type"] == "upstream"
        # The partner catalog never sees the internal upstream's tools.
        assert not [name for name in names(gateway, PARTNER) if name.startswith("files.")]
        with pytest.raises(MCPError):
            await gateway.call_tool(PARTNER, "files.echo", {"text": "x"}, "req-5")
    calls_seen = [event for event in seen(record) if event["event"] == "call"]
    assert len(calls_seen) == 1  # the invalid call never reached it
    start = next(event for event in seen(record) if event["event"] == "start")
    # The whole environment it got: the catalog's env and PATH, nothing of the gateway's (no token, no HOME).
    assert set(start["env"]) - {"LC_CTYPE"} == {"PATH", "UPSTREAM_RECORD"}


async def test_one_session_serves_every_call(deployment: Deployment, record: Path) -> None:
    add_server(deployment, record)
    await pin_all(deployment)
    async with federated(deployment) as gateway:
        await up(gateway)
        async with anyio.create_task_group() as group:
            for index in range(6):
                group.start_soon(gateway.call_tool, ALICE, "files.echo", {"text": str(index)}, f"req-{index}")
    starts = [event for event in seen(record) if event["event"] == "start"]
    # One for pin's own listing, one for the serving session: never one per call.
    assert len(starts) == 2


async def test_drift_hides_the_tool_audits_once_and_pin_brings_it_back(deployment: Deployment, record: Path) -> None:
    add_server(deployment, record)
    await pin_all(deployment)
    async with federated(deployment) as gateway:
        await up(gateway)
        before = load_pins(deployment.root / "catalogs", "internal").get("files", "echo")
        assert before is not None
        result = await gateway.call_tool(ALICE, "files.mutate", {}, "req-m")
        assert not result.is_error
        # The upstream's own list_changed makes the gateway re-list: echo no longer matches its pin.
        await until(lambda: "files.echo" not in names(gateway), what="echo hidden")
        with pytest.raises(MCPError) as hidden:
            await gateway.call_tool(ALICE, "files.echo", {"text": "x"}, "req-h")
        assert hidden.value.error.data["code"] == "unknown_tool"
        assert "files.slow" in names(gateway)  # the unchanged tools stay
        changed = [row for row in rows(gateway, "catalog.drift") if row["detail"]["kind"] == "changed"]
        assert len(changed) == 1
        assert changed[0]["detail"]["old_digest"] == before.digest
        assert changed[0]["detail"]["new_digest"] != before.digest
        for _ in range(3):  # calls and re-listings do not audit it again
            with pytest.raises(MCPError):
                await gateway.call_tool(ALICE, "files.echo", {"text": "x"}, "req-again")
        assert len([row for row in rows(gateway, "catalog.drift") if row["detail"]["kind"] == "changed"]) == 1
