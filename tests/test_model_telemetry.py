"""Model calls in the trace: a real gateway process calls a scripted OpenAI-compatible engine on 127.0.0.1 and
exports over OTLP/HTTP to a receiver. Each request to an endpoint is a CLIENT child span with the GenAI
attributes, and the engine receives a W3C traceparent naming that span; tracestate, which the caller sets,
does not leave."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import yaml
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.devkeys import DevKey
from tests.conftest import ExampleApi, make_deployment
from tests.fault_model import FaultServer, running_fault_server
from tests.model_setup import model, model_tool
from tests.otlp_receiver import ReceivedSpan, running_receiver
from tests.test_telemetry import CLIENT, SERVER, gateway

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_PARENT = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def engine() -> Iterator[FaultServer]:
    with running_fault_server() as server:
        yield server


async def _call(url: str, token: str) -> None:
    meta = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_PARENT}-01", "tracestate": "caller=secret-state"}
    with anyio.fail_after(60):
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
            Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
        ):
            result = await client.call_tool("llm.summarise", {"text": "the quarterly report"}, meta=meta)  # type: ignore[arg-type]
            assert not result.is_error, result


def test_each_model_request_is_a_client_span_and_the_engine_gets_its_traceparent(
    tmp_path: Path, example_api: ExampleApi, dev_key: DevKey, engine: FaultServer
) -> None:
    with running_receiver() as receiver:
        deployment = make_deployment(
            tmp_path,
            example_api,
            dev_key,
            egress={"allow": [example_api.url, receiver.url, engine.url]},
            telemetry={"otlp_endpoint": receiver.url, "schedule_delay": 0.1, "metric_interval": 0.3},
        )
        # The primary answers 500, so the call fails over: two requests, two spans.
        models = [
            model("primary", engine.base_url, "fail-500", fallback="backup"),
            model("backup", engine.base_url, "ok"),
        ]
        (tmp_path / "catalogs" / "models.yaml").write_text(yaml.safe_dump({"models": models}))
        internal = tmp_path / "catalogs" / "internal.yaml"
        catalog = yaml.safe_load(internal.read_text())
        catalog["tools"].append(model_tool("llm.summarise", "primary"))
        internal.write_text(yaml.safe_dump(catalog))
        with (tmp_path / "policies" / "internal.csv").open("a") as policy:
            policy.write("p, role:support, internal, llm.*, call, allow\n")
        token = deployment.mint("alice", ("support",), "internal")
        before = len(engine.seen)
        with gateway(deployment) as url:
            anyio.run(_call, url, token)
            server = receiver.wait_until(
                lambda: next(
                    (s for s in receiver.spans if s.kind == SERVER and s.name == "tools/call llm.summarise"), None
                )
            )
            spans: list[ReceivedSpan] = receiver.wait_until(
                lambda: (
                    found
                    if len(found := [s for s in receiver.spans if s.parent_span_id == server.span_id]) >= 2
                    else None
                )
            )

    # The caller's trace continues through the gateway.
    assert server.trace_id == CALLER_TRACE
    failed, answered = sorted(spans, key=lambda span: span.attributes["mcp_gateway.model"] != "primary")
    for span in (failed, answered):
        assert span.kind == CLIENT
        assert span.trace_id == CALLER_TRACE
        assert span.attributes["gen_ai.operation.name"] == "chat"
        assert span.attributes["server.address"] == "127.0.0.1"
    assert failed.name == "chat fail-500"
    assert failed.attributes["gen_ai.request.model"] == "fail-500"
    assert failed.attributes["error.type"] == "upstream_failed"
    assert "gen_ai.usage.input_tokens" not in failed.attributes
    assert answered.name == "chat ok"
    assert answered.attributes["gen_ai.request.model"] == "ok"
    assert answered.attributes["mcp_gateway.model"] == "backup"
    assert (answered.attributes["gen_ai.usage.input_tokens"], answered.attributes["gen_ai.usage.output_tokens"]) == (
        5,
        3,
    )
    assert "error.type" not in answered.attributes
    assert "quarterly" not in json.dumps([s.attributes for s in receiver.spans])  # no prompt in any span

    # Each engine request carried a traceparent naming its own span; the caller's tracestate stayed behind.
    seen = engine.seen[before:]
    assert [item.body["model"] for item in seen] == ["fail-500", "ok"]
    for item, span in zip(seen, (failed, answered), strict=True):
        version, trace_id, parent_id, _flags = item.headers["traceparent"].split("-")
        assert (version, trace_id, parent_id) == ("00", CALLER_TRACE, span.span_id)
        assert "tracestate" not in item.headers

    # The audit rows of the call carry the same trace.
    log = AuditLog(f"sqlite:///{deployment.database}")
    rows = log.by_trace(CALLER_TRACE)
    log.close()
    assert [row["event"] for row in rows] == ["tools/call", "tools/call.result"]
    assert json.loads(rows[-1]["detail"])["served_by"] == "backup"
