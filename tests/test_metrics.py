"""The Prometheus endpoint: scraped over real HTTP from a real gateway process after real MCP calls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from prometheus_client.parser import text_string_to_metric_families

from mcp_gateway.config import load_settings
from mcp_gateway.errors import ConfigError
from mcp_gateway.metrics import GatewayMetrics
from tests.conftest import Deployment, ExampleApi, HttpGateway, configure, free_port, make_deployment, serving_http

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: Samples, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metered(tmp_path: Path, example_api: ExampleApi, dev_key: object) -> Iterator[tuple[HttpGateway, str]]:
    port = free_port()
    deployment = make_deployment(tmp_path, example_api, dev_key, metrics={"enabled": True, "port": port})  # type: ignore[arg-type]
    configure(deployment, "internal", "crm.customer_lookup", rate_limit="2/minute")
    with serving_http(deployment) as served:
        yield served, f"http://127.0.0.1:{port}/metrics"


async def _calls(deployment: Deployment, base: str) -> list[str]:
    token = deployment.mint("alice-secret-subject", ("support",), "internal")
    outcomes = []
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(f"{base}/mcp", http_client=http), read_timeout_seconds=20) as client,
    ):
        for _ in range(3):
            result = await client.call_tool("crm.customer_lookup", {"customer_id": "c-100"})
            outcomes.append("error" if result.is_error else "ok")
        with pytest.raises(MCPError):
            await client.call_tool("hr.salary_lookup", {"employee_id": "e-7"})
    return outcomes


async def test_a_scrape_after_real_calls_counts_calls_denials_stages_and_audit(
    metered: tuple[HttpGateway, str],
) -> None:
    served, url = metered
    before = samples(httpx.get(url).text)
    assert value(before, "mcp_gateway_calls_total", catalog="internal", outcome="ok") == 0
    assert await _calls(served.deployment, served.url) == ["ok", "ok", "error"]
    stranger = served.deployment.mint("mallory", ("support",), "internal", audience="https://elsewhere.example/mcp")
    refused = httpx.post(f"{served.url}/mcp", headers={"Authorization": f"Bearer {stranger}"}, content=b"{}")
    assert refused.status_code == 401

    answer = httpx.get(url)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    scraped = samples(answer.text)
    assert value(scraped, "mcp_gateway_calls_total", catalog="internal", outcome="ok") == 2
    assert value(scraped, "mcp_gateway_calls_total", catalog="internal", outcome="rate_limited") == 1
    assert value(scraped, "mcp_gateway_calls_total", catalog="internal", outcome="unknown_tool") == 1
    assert value(scraped, "mcp_gateway_denials_total", catalog="internal", reason="rate_limited") == 1
    assert value(scraped, "mcp_gateway_denials_total", catalog="internal", reason="unknown_tool") == 1
    assert value(scraped, "mcp_gateway_rate_limited_total", catalog="internal") == 1
    assert value(scraped, "mcp_gateway_call_duration_seconds_count", catalog="internal") == 4
    assert value(scraped, "mcp_gateway_stage_duration_seconds_count", stage="policy") == 4
    assert value(scraped, "mcp_gateway_stage_duration_seconds_count", stage="backend") == 2
    assert value(scraped, "mcp_gateway_stage_duration_seconds_count", stage="audit_outcome") == 2
    # Rows: start-up, 2 x (decision + outcome) or outcome only, the limit and the denial: at least 5 transactions.
    assert value(scraped, "mcp_gateway_audit_commit_duration_seconds_count") >= 5
    assert value(scraped, "mcp_gateway_audit_commit_rows_sum") >= value(before, "mcp_gateway_audit_commit_rows_sum") + 4
    assert ("mcp_gateway_audit_queue_depth", frozenset()) in scraped
    assert value(scraped, "mcp_gateway_dropped_spans_total") == 0
    assert value(scraped, "mcp_gateway_auth_refusals_total", reason="wrong audience") == 1
    assert 0 <= value(scraped, "mcp_gateway_jwks_age_seconds") < 300
    # Bounded labels: neither the subject nor an argument appears anywhere.
    assert "alice-secret-subject" not in answer.text
    assert "mallory" not in answer.text
    assert "c-100" not in answer.text


def test_metrics_are_not_on_the_mcp_port_with_or_without_a_token(metered: tuple[HttpGateway, str]) -> None:
    served, url = metered
    token = served.deployment.mint("alice", ("support",), "internal")
    assert httpx.get(f"{served.url}/metrics").status_code == 404
    assert httpx.get(f"{served.url}/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 404
    # The metrics listener serves /metrics only.
    assert httpx.get(url.replace("/metrics", "/mcp")).status_code == 404
    assert httpx.get(url.replace("/metrics", "/healthz")).status_code == 404


def test_each_gateway_has_its_own_registry_and_upstream_health_is_settable() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    first.call_finished("internal", "ok", [("policy", 0.001)], 0.002)
    first.upstream_up("files", True)
    first.upstream_up("tickets", False)
    mine, theirs = (samples(_render(metrics)) for metrics in (first, second))
    assert value(mine, "mcp_gateway_calls_total", catalog="internal", outcome="ok") == 1
    assert value(theirs, "mcp_gateway_calls_total", catalog="internal", outcome="ok") == 0
    assert value(mine, "mcp_gateway_upstream_up", upstream="files") == 1
    assert value(mine, "mcp_gateway_upstream_up", upstream="tickets") == 0
    first.upstream_gone("tickets")
    first.upstream_gone("never-configured")
    assert ("mcp_gateway_upstream_up", frozenset({("upstream", "tickets")})) not in samples(_render(first))


def test_breaker_states_are_read_at_scrape_one_series_per_model_and_state() -> None:
    metrics = GatewayMetrics()
    states = {"gemma": "open"}
    metrics.watched.breaker_states = lambda: states
    metrics.watched.models = lambda: ("gemma", "llama")
    scraped = samples(_render(metrics))
    assert value(scraped, "mcp_gateway_model_breaker_state", model="gemma", state="open") == 1
    assert value(scraped, "mcp_gateway_model_breaker_state", model="gemma", state="closed") == 0
    assert value(scraped, "mcp_gateway_model_breaker_state", model="llama", state="closed") == 1  # not called yet
    states["gemma"] = "half-open"
    scraped = samples(_render(metrics))
    assert value(scraped, "mcp_gateway_model_breaker_state", model="gemma", state="half-open") == 1
    assert value(scraped, "mcp_gateway_model_breaker_state", model="gemma", state="open") == 0


def test_an_upstream_error_is_an_outcome_not_a_denial() -> None:
    metrics = GatewayMetrics()
    metrics.call_finished("partner", "upstream_failed", [], 0.5)
    scraped = samples(_render(metrics))
    assert value(scraped, "mcp_gateway_calls_total", catalog="partner", outcome="upstream_failed") == 1
    assert not [key for key in scraped if key[0] == "mcp_gateway_denials_total"]


def test_metrics_cannot_share_the_mcp_port(deployment: Deployment) -> None:
    import yaml

    config = yaml.safe_load(deployment.config.read_text())
    config["metrics"] = {"enabled": True, "port": deployment.port}
    deployment.config.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="never served on the MCP port"):
        load_settings(deployment.config)


def _render(metrics: GatewayMetrics) -> str:
    return metrics.exposition()[0].decode()


def test_a_metrics_port_that_cannot_be_bound_stops_the_start(
    tmp_path: Path, example_api: ExampleApi, dev_key: object
) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        deployment = make_deployment(tmp_path, example_api, dev_key, metrics={"enabled": True, "port": port})  # type: ignore[arg-type]
        process = subprocess.run(
            [sys.executable, "-m", "mcp_gateway", "serve", "--transport", "streamable-http"],
            env=deployment.env(),
            cwd=deployment.root,
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert process.returncode == 3  # uvicorn's start-up failure, before the MCP server starts
    assert b"address already in use" in process.stderr.lower()
