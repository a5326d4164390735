"""A caller that disconnects mid-call still leaves its call an outcome (``cancelled``) in the trail, over every
streamable HTTP mode: the 2026-07-28 stateless one as well as the older session mode."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.devkeys import DevKey
from tests.conftest import ExampleApi, configure, make_deployment, serving_http
from tests.test_transports import connect
from tests.test_upstream import RawServer


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_caller_that_disconnects_mid_call_gets_a_cancelled_outcome(
    mode: str, tmp_path: Path, example_api: ExampleApi, dev_key: DevKey
) -> None:
    # The backend takes far longer than the test waits: the call ends only because its caller goes away.
    with RawServer(delay=120) as slow:
        deployment = make_deployment(tmp_path, example_api, dev_key, egress={"allow": [example_api.url, slow.url]})
        configure(
            deployment,
            "internal",
            "crm.search",
            backend={"type": "http", "url": f"{slow.url}/customers", "query": {"q": "query"}, "timeout": 300},
        )
        token = deployment.mint("alice", ("support",), "internal")
        with serving_http(deployment):
            with anyio.fail_after(60):
                async with connect("streamable-http", mode, deployment, token) as client:
                    async with anyio.create_task_group() as group:
                        group.start_soon(client.call_tool, "crm.search", {"query": "ada"})
                        while slow.connections == 0:
                            await anyio.sleep(0.05)
                        group.cancel_scope.cancel()
            log = AuditLog(f"sqlite:///{deployment.database}")
            try:
                with anyio.fail_after(30):
                    while not (calls := [r for r in log.iter_rows() if r["tool"] == "crm.search"]) or (
                        calls[-1]["outcome"] == "started"
                    ):
                        await anyio.sleep(0.1)
            finally:
                log.close()
    assert [(row["event"], row["outcome"]) for row in calls] == [
        ("tools/call", "started"),
        ("tools/call.result", "cancelled"),
    ]
