"""OpenTelemetry end to end: a real gateway process exports over OTLP/HTTP to a receiver on 127.0.0.1 that
decodes the real exporter's protobuf. The SDK's server span carries the gateway's decision; the REST call is a
child span whose W3C traceparent reaches the upstream; audit rows carry the same trace and span ids; no
argument leaves in a span; and a collector that is down or stuck never blocks a call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import requests
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typer.testing import CliRunner

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.cli.app import app
from mcp_gateway.config import EgressSettings
from mcp_gateway.devkeys import DevKey
from mcp_gateway.egress import guarded_requests_session
from tests.conftest import Deployment, ExampleApi, free_port, make_deployment, serving_http
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, running_receiver
from tests.test_egress import Resolver
from tests.test_upstream import RawServer

SERVER, CLIENT = 2, 3  # OTLP SpanKind values


@contextmanager
def gateway(deployment: Deployment) -> Iterator[str]:
    with serving_http(deployment) as served:
        yield served.url


async def calls(url: str, token: str, count: int = 1, denied: int = 0) -> None:
    with anyio.fail_after(60):
        await _calls(url, token, count, denied)


async def _calls(url: str, token: str, count: int, denied: int) -> None:
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
    ):
        for _ in range(count):
            result = await client.call_tool("crm.customer_lookup", {"customer_id": "c-100"})
            assert not result.is_error
        for _ in range(denied):
            with pytest.raises(MCPError):
                await client.call_tool("hr.salary_lookup", {"employee_id": "e-7"})


def _deployment(root: Path, api: ExampleApi, key: DevKey, endpoint: str, **telemetry: Any) -> Deployment:
    return make_deployment(
        root,
        api,
        key,
        egress={"allow": [api.url, endpoint]},
        telemetry={"otlp_endpoint": endpoint, "schedule_delay": 0.1, "metric_interval": 0.3, **telemetry},
    )


def _server_span(receiver: OtlpReceiver, tool: str) -> ReceivedSpan | None:
    return next((s for s in receiver.spans if s.kind == SERVER and s.name == f"tools/call {tool}"), None)


def test_spans_metrics_traceparent_and_audit_rows_tell_one_story(
    tmp_path: Path, example_api: ExampleApi, dev_key: DevKey
) -> None:
    with running_receiver() as receiver:
        deployment = _deployment(tmp_path, example_api, dev_key, receiver.url)
        token = deployment.mint("alice", ("support",), "internal")
        before = len(example_api.seen())
        with gateway(deployment) as url:
            anyio.run(calls, url, token, 1, 1)
            server = receiver.wait_until(lambda: _server_span(receiver, "crm.customer_lookup"))
            client = receiver.wait_until(
                lambda: next((s for s in receiver.spans if s.parent_span_id == server.span_id), None)
            )
            denied = receiver.wait_until(lambda: _server_span(receiver, "hr.salary_lookup"))
            receiver.wait_until(lambda: receiver.metric_total("mcp_gateway.denials") >= 1)
        calls_total = receiver.metric_total("mcp_gateway.calls")

    # The SDK's own server span, enriched; not a span of ours per stage.
    assert server.scope == "mcp-python-sdk"
    attributes = server.attributes
    assert attributes["mcp.method.name"] == "tools/call"
    assert attributes["gen_ai.tool.name"] == "crm.customer_lookup"
    assert attributes["gen_ai.operation.name"] == "execute_tool"
    assert attributes["mcp_gateway.decision"] == "allow"
    assert attributes["mcp_gateway.rule"].startswith("internal.csv:")
    assert attributes["mcp_gateway.catalog"] == "internal"
    assert attributes["mcp_gateway.subject"] == "alice"
    assert len(attributes["mcp_gateway.policy.version"]) == 64
    stages = ("catalog", "policy", "limits", "audit_decision", "backend", "result_dlp", "audit_outcome")
    assert {f"mcp_gateway.stage.{stage}.ms" for stage in stages} <= set(attributes)
    assert "mcp_gateway.stage.approval.ms" not in attributes  # the tool needs no second-person approval
    assert not [s for s in receiver.spans if s.name.startswith("mcp_gateway.policy")]  # detail: calls

    # One child span for the outbound REST call, named by its template.
    assert client.kind == CLIENT
    assert client.trace_id == server.trace_id
    assert client.attributes["http.request.method"] == "GET"
    assert client.attributes["url.template"].endswith("/customers/{customer_id}")
    assert client.attributes["http.response.status_code"] == 200

    # W3C traceparent reached the upstream, naming the client span as parent.
    sent = example_api.seen()[before:]
    version, trace_id, parent_id, flags = sent[-1]["headers"]["traceparent"].split("-")
    assert (version, trace_id, parent_id) == ("00", server.trace_id, client.span_id)
    # The SDK (1.45) sets W3C level 2's "random trace id" flag as well as "sampled": 03, not 01.
    assert int(flags, 16) & 0x01
    assert "baggage" not in sent[-1]["headers"]

    # The refusal is on its span as a decision and a stable error type.
    assert denied.attributes["mcp_gateway.decision"] == "deny"
    assert denied.attributes["mcp_gateway.error.code"] == "unknown_tool"
    assert denied.attributes["error.type"] == "-32602"  # set by the SDK after the handler: the JSON-RPC code

    # No argument content in any span by default.
    dump = json.dumps([s.attributes for s in receiver.spans])
    assert "c-100" not in dump
    assert "e-7" not in dump

    # Metrics: calls, denials, latency.
    assert calls_total >= 2
    assert "mcp_gateway.call.duration" in receiver.metrics

    # Every audit row of the call carries the trace id, and the server span's id.
    log = AuditLog(f"sqlite:///{deployment.database}")
    rows = log.by_trace(server.trace_id)
    log.close()
    assert [row["event"] for row in rows] == ["tools/call", "tools/call.result"]
    assert all(json.loads(row["detail"])["span_id"] == server.span_id for row in rows)

    # The tabletop: `audit trace` prints the story from the trail alone, and the trail verifies.
    result = CliRunner().invoke(app, ["audit", "trace", server.trace_id, "--config", str(deployment.config)])
    assert result.exit_code == 0, result.output
    for expected in ("alice", "internal.csv:", "/customers/{customer_id}", server.span_id, "ok", "latency"):
        assert expected in result.output
    verified = CliRunner().invoke(app, ["audit", "verify", "--config", str(deployment.config)])
    assert verified.exit_code == 0, verified.output


def test_without_a_collector_no_span_is_recorded_but_trace_ids_still_link_rows_and_upstream(
    tmp_path: Path, example_api: ExampleApi, dev_key: DevKey
) -> None:
    """No endpoint: spans are not recorded (nothing would read them), yet each call still has a trace id that
    its audit rows share and that the upstream receives in ``traceparent``, marked not sampled."""
    deployment = make_deployment(tmp_path, example_api, dev_key)
    token = deployment.mint("alice", ("support",), "internal")
    before = len(example_api.seen())
    with gateway(deployment) as url:
        anyio.run(calls, url, token, 2)
    sent = example_api.seen()[before:]
    assert len(sent) == 2
    parents = [item["headers"]["traceparent"].split("-") for item in sent]
    log = AuditLog(f"sqlite:///{deployment.database}")
    try:
        for version, trace_id, parent_id, flags in parents:
            assert version == "00"
            assert int(flags, 16) & 0x01 == 0  # a valid context, not sampled
            rows = log.by_trace(trace_id)
            assert [row["event"] for row in rows] == ["tools/call", "tools/call.result"]
            assert len({json.loads(row["detail"])["span_id"] for row in rows}) == 1
            assert parent_id != "0" * 16
    finally:
        log.close()
    assert parents[0][1] != parents[1][1]  # one trace per call


def test_without_a_collector_a_callers_sampled_trace_still_reaches_the_upstream_sampled(
    tmp_path: Path, example_api: ExampleApi, dev_key: DevKey
) -> None:
    """The caller decided to sample this trace; a backend that traces on its own must see that decision."""
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    deployment = make_deployment(tmp_path, example_api, dev_key)
    token = deployment.mint("alice", ("support",), "internal")
    before = len(example_api.seen())

    async def call(url: str) -> None:
        with anyio.fail_after(60):
            async with (
                create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
                Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
            ):
                meta = {"traceparent": f"00-{caller_trace}-{caller_span}-01"}
                result = await client.call_tool("crm.customer_lookup", {"customer_id": "c-100"}, meta=meta)  # type: ignore[arg-type]
                assert not result.is_error

    with gateway(deployment) as url:
        anyio.run(call, url)
    version, trace_id, parent_id, flags = example_api.seen()[before:][-1]["headers"]["traceparent"].split("-")
    assert (version, trace_id) == ("00", caller_trace)
    assert parent_id != caller_span  # the gateway's own span in between
    assert int(flags, 16) & 0x01  # still sampled
    log = AuditLog(f"sqlite:///{deployment.database}")
    try:
        assert [row["event"] for row in log.by_trace(caller_trace)] == ["tools/call", "tools/call.result"]
    finally:
        log.close()


def test_collector_down_never_fails_a_call(tmp_path: Path, example_api: ExampleApi, dev_key: DevKey) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    deployment = _deployment(tmp_path, example_api, dev_key, nowhere)
    token = deployment.mint("alice", ("support",), "internal")
    with gateway(deployment) as url:
        anyio.run(calls, url, token, 20)


def test_stuck_collector_never_blocks_a_call_and_dropped_spans_are_counted(
    tmp_path: Path, example_api: ExampleApi, dev_key: DevKey
) -> None:
    with running_receiver() as receiver:
        receiver.hold()  # every export now waits until released
        deployment = _deployment(tmp_path, example_api, dev_key, receiver.url, max_queue_size=4, export_timeout=30)
        token = deployment.mint("alice", ("support",), "internal")
        with gateway(deployment) as url:
            anyio.run(calls, url, token, 30)  # completes while the collector is stuck
            receiver.release()
            receiver.wait_until(lambda: receiver.metric_total("mcp_gateway.telemetry.dropped_spans") > 0, timeout=30)


def test_otlp_endpoint_must_be_on_the_egress_allowlist(deployment: Deployment) -> None:
    text = deployment.config.read_text() + "telemetry:\n  otlp_endpoint: http://collector.example:4318\n"
    deployment.config.write_text(text)
    result = CliRunner().invoke(app, ["config", "check", "--config", str(deployment.config)])
    assert result.exit_code == 2
    assert "telemetry.otlp_endpoint" in result.output


# --- The exporter's HTTP goes through the egress guard ---------------------------------------------------------


def _named_receiver(receiver: OtlpReceiver) -> tuple[str, EgressSettings]:
    """The receiver under a name only the scripted resolver knows: reaching it proves the guard's pinned pool
    carried the request."""
    origin = f"http://collector.gateway.test:{receiver.url.rsplit(':', 1)[1]}"
    return origin, EgressSettings(allow=(origin,))


def _export_one(session: requests.Session, endpoint: str) -> SpanExportResult:
    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    provider.get_tracer("test").start_span("exported").end()
    exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=5, session=session)
    try:
        return exporter.export(spans.get_finished_spans())
    finally:
        exporter.shutdown()
        provider.shutdown()


def test_otlp_exporter_sends_through_the_guarded_pinned_client() -> None:
    with running_receiver() as receiver:
        origin, egress = _named_receiver(receiver)
        resolver = Resolver(["127.0.0.1"])
        result = _export_one(guarded_requests_session(egress, resolver=resolver.sync), origin)
        assert result is SpanExportResult.SUCCESS
        assert [span.name for span in receiver.spans] == ["exported"]
        assert resolver.lookups == [("collector.gateway.test", int(origin.rsplit(":", 1)[1]))]


@pytest.mark.parametrize(
    "answer",
    [pytest.param(["169.254.169.254"], id="cloud-metadata"), pytest.param(["127.0.0.1", "fe80::1"], id="mixed")],
)
def test_otlp_exporter_refuses_a_collector_name_resolving_to_a_forbidden_address(answer: list[str]) -> None:
    with running_receiver() as receiver:
        origin, egress = _named_receiver(receiver)
        session = guarded_requests_session(egress, resolver=Resolver(answer).sync)
        with pytest.raises(requests.ConnectionError, match="resolves to"):
            session.post(f"{origin}/v1/traces", data=b"")
        assert _export_one(guarded_requests_session(egress, resolver=Resolver(answer).sync), origin) is not (
            SpanExportResult.SUCCESS
        )
        assert receiver.requests == 0


def test_otlp_session_refuses_origins_off_the_allowlist_redirects_and_proxies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with running_receiver() as receiver, RawServer() as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        session = guarded_requests_session(EgressSettings(allow=(receiver.url,)))
        with pytest.raises(requests.ConnectionError, match="not allowed"):
            session.post(f"http://127.0.0.1:{free_port()}/v1/traces", data=b"")
        # Straight to the collector, not through the proxy the environment names.
        assert _export_one(session, receiver.url) is SpanExportResult.SUCCESS
        assert proxy.connections == 0
    # Connection: close, as the scripted server closes after each reply; without it the client could reuse the
    # closed connection for the second post and fail with "disconnected" instead (a flake, seen 1 run in 3).
    redirect = (
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n"
    )
    flood = b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n" + b"x" * 2_000_000
    with RawServer({"/v1/traces": redirect, "/v1/metrics": flood}) as collector:
        session = guarded_requests_session(EgressSettings(allow=(collector.url,)))
        # requests surprise (2.34): with max_redirects=0 a 3xx raises even under allow_redirects=False (the
        # exporter's setting), because the session still works out ``response.next``. Never followed either way.
        for follow in (False, True):
            with pytest.raises(requests.TooManyRedirects):
                session.post(f"{collector.url}/v1/traces", data=b"", allow_redirects=follow)
        assert collector.connections == 2
        with pytest.raises(requests.ConnectionError, match="exceeds"):
            session.post(f"{collector.url}/v1/metrics", data=b"")
        assert _export_one(session, collector.url) is SpanExportResult.FAILURE
        assert collector.connections == 4
