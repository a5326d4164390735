"""Federation over streamable HTTP: a real upstream process on 127.0.0.1, and a real gateway process with a real
MCP client in front of it (what the caller sees, what the upstream sees)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
import yaml
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.conftest import ROOT, Deployment, free_port, serving_http, stop
from tests.federation_helpers import ALICE, UPSTREAM, add_server, federated, names, pin_all, rows, seen, until

SECRET = "upstream-secret-" + os.urandom(6).hex()


@contextmanager
def http_upstream(port: int, record: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "UPSTREAM_RECORD": str(record)}
    process = subprocess.Popen([sys.executable, str(UPSTREAM), "--http", str(port)], env=env)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1, trust_env=False)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the upstream did not start") from None
                time.sleep(0.05)
        yield process
    finally:
        stop(process)


def allow(deployment: Deployment, url: str) -> None:
    data = yaml.safe_load(deployment.config.read_text())
    data["egress"]["allow"].append(url)
    deployment.config.write_text(yaml.safe_dump(data))


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "upstream.jsonl"


@pytest.fixture
def port(deployment: Deployment, record: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    port = free_port()
    allow(deployment, f"http://127.0.0.1:{port}")
    monkeypatch.setenv("FILES_TOKEN", SECRET)
    add_server(
        deployment,
        record,
        transport="streamable-http",
        url=f"http://127.0.0.1:{port}/mcp",
        credential_env="FILES_TOKEN",
    )
    return port


def calls(record: Path) -> list[dict[str, Any]]:
    return [event for event in seen(record) if event["event"] == "call"]


@pytest.mark.slow
async def test_an_expired_http_session_is_re_established(deployment: Deployment, record: Path, port: int) -> None:
    with http_upstream(port, record) as first:
        await pin_all(deployment)
        async with federated(deployment) as gateway:
            await until(lambda: "files.echo" in names(gateway), what="listed")
            assert not (await gateway.call_tool(ALICE, "files.echo", {"text": "one"}, "req-1")).is_error
            # Restart the upstream under the running gateway: the new process knows nothing of the old session.
            stop(first)
            with http_upstream(port, record):
                result = await gateway.call_tool(ALICE, "files.echo", {"text": "two"}, "req-2")
                assert not result.is_error, [
                    r["detail"].get("error") for r in rows(gateway) if r["request_id"] == "req-2"
                ]
    sent = calls(record)
    assert [call["tool"] for call in sent][-1] == "echo"
    # Only the server-side credential went upstream.
    assert {call["headers"]["authorization"] for call in sent} == {f"Bearer {SECRET}"}


@pytest.mark.slow
async def test_a_caller_through_the_gateway_process(
    deployment: Deployment, record: Path, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The gateway process imports this tree's package, whatever the interpreter has installed.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    with http_upstream(port, record):
        await pin_all(deployment)
        token = deployment.mint("alice", ("support",), "internal")
        changed = anyio.Event()

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                changed.set()

        with serving_http(deployment) as served:
            async with (
                create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
                Client(
                    streamable_http_client(f"{served.url}/mcp", http_client=http),
                    mode="legacy",
                    read_timeout_seconds=20,
                    message_handler=on_message,
                ) as client,
            ):
                await until_listed(client)
                progress: list[float] = []

                async def on_progress(done: float, total: float | None, message: str | None) -> None:
                    progress.append(done)

                result = await client.call_tool(
                    "files.slow", {"seconds": 0}, progress_callback=on_progress, meta={"caller/secret": "s3"}
                )
                assert not result.is_error
                assert progress == [1, 2, 3]
                assert not (await client.call_tool("files.mutate", {})).is_error
                with anyio.fail_after(15):
                    await changed.wait()
                listed = [tool.name for tool in (await client.list_tools()).tools]
                assert "files.echo" not in listed
                assert "files.slow" in listed
            ready = httpx.get(f"{served.url}/readyz", trust_env=False).json()
            assert ready["upstreams"]["internal/files"]["state"] == "up"
    slow = next(call for call in calls(record) if call["tool"] == "slow")
    # Never the caller's credentials: not its token, not its _meta; a traceparent and a progress token only.
    assert token not in json.dumps(seen(record))
    assert slow["headers"]["authorization"] == f"Bearer {SECRET}"
    # (The SDK's server hands _meta over with Python names: progress_token.)
    assert set(slow["meta"]) <= {"progress_token", "progressToken", "traceparent", "tracestate"}
    assert {"progress_token", "progressToken"} & set(slow["meta"])
    assert "traceparent" in slow["meta"]


async def until_listed(client: Client) -> None:
    with anyio.fail_after(20):
        while "files.echo" not in [tool.name for tool in (await client.list_tools()).tools]:
            await anyio.sleep(0.1)
