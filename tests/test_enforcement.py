"""Rate limits, argument checks and DLP in the transport-free core, with the real backend and audit trail."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from mcp_gateway.errors import ConfigError
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import Principal
from tests.conftest import Deployment, ExampleApi, GatewayFactory, configure

ALICE = Principal("alice", ("support",), "internal", (), None, "test", 2**40)
ACME = Principal("acme-bot", ("partner",), "partner", (), None, "test", 2**40)

CARD = "4111 1111 1111 1111"
EMAIL = "someone.private@example.net"


def rows(gateway: Gateway) -> list[dict[str, Any]]:
    return list(gateway.audit.iter_rows())


def error(result: Any) -> dict[str, Any]:
    assert result.is_error, result
    return dict(result.structured_content["error"])


# --- rate limits -------------------------------------------------------------------------------------------


async def test_200_concurrent_callers_are_admitted_exactly_up_to_the_limit(
    deployment: Deployment, make_gateway: GatewayFactory, example_api: ExampleApi
) -> None:
    configure(deployment, "internal", "crm.search", rate_limit="20/minute")
    gateway = make_gateway()
    before = len([r for r in example_api.seen() if r["path"] == "/customers"])
    outcomes: list[str] = []

    async def caller(index: int) -> None:
        result = await gateway.call_tool(ALICE, "crm.search", {"query": "ada"}, f"r{index}")
        outcomes.append(error(result)["code"] if result.is_error else "ok")

    async with anyio.create_task_group() as group:
        for index in range(200):
            group.start_soon(caller, index)
    assert outcomes.count("ok") == 20
    assert outcomes.count("rate_limited") == 180
    assert len([r for r in example_api.seen() if r["path"] == "/customers"]) - before == 20
    limited = [row for row in rows(gateway) if row["outcome"] == "rate_limited"]
    assert len(limited) == 180
    assert all(row["event"] == "tools/call" and row["decision"] == "allow" for row in limited)


async def test_the_catalog_default_applies_per_tool_and_a_tool_can_override_it(
    deployment: Deployment, make_gateway: GatewayFactory
) -> None:
    configure(deployment, "internal", rate_limit="2/hour")
    configure(deployment, "internal", "crm.customer_lookup", rate_limit="4/hour")
    gateway = make_gateway()
    searches = [await gateway.call_tool(ALICE, "crm.search", {"query": "ada"}, "r") for _ in range(3)]
    lookups = [await gateway.call_tool(ALICE, "crm.customer_lookup", {"customer_id": "c-100"}, "r") for _ in range(5)]
    assert [r.is_error for r in searches] == [False, False, True]
    assert [r.is_error for r in lookups] == [False] * 4 + [True]
    assert error(searches[-1])["retry_after"] == 1800


async def test_a_limit_is_taken_before_argument_validation_and_never_for_a_hidden_tool(
    deployment: Deployment, make_gateway: GatewayFactory
) -> None:
    configure(deployment, "internal", rate_limit="1/hour")
    gateway = make_gateway()
    first = await gateway.call_tool(ALICE, "crm.search", {"query": 5}, "r")
    assert error(first)["code"] == "invalid_arguments"
    assert error(await gateway.call_tool(ALICE, "crm.search", {"query": "ada"}, "r"))["code"] == "rate_limited"
    for _ in range(3):  # alice may not call hr.*: she learns nothing about its limit
        with pytest.raises(MCPError) as hidden:
            await gateway.call_tool(ALICE, "hr.salary_lookup", {"employee_id": "e-7"}, "r")
        assert hidden.value.data["code"] == "unknown_tool"


@pytest.mark.parametrize("rate", ["60", "0/minute", "5/fortnight"])
async def test_a_bad_rate_in_a_catalog_refuses_start_up_naming_the_key(
    deployment: Deployment, make_gateway: GatewayFactory, rate: str
) -> None:
    configure(deployment, "internal", "crm.search", rate_limit=rate)
    with pytest.raises(ConfigError, match=r"tools\.1\.rate_limit"):
        make_gateway()


# --- arguments: one parse, hostile shapes -------------------------------------------------------------------


async def test_hostile_nesting_is_refused_without_recursing(gateway_default: Gateway) -> None:
    value: Any = "x"
    for _ in range(100_000):
        value = [value]
    result = await gateway_default.call_tool(ALICE, "crm.search", {"query": "ada", "deep": value}, "r")
    assert error(result)["code"] == "invalid_arguments"
    assert "nested deeper" in error(result)["message"]


@pytest.mark.parametrize(
    "query", [float("nan"), float("inf"), "\ud800 lone surrogate"], ids=["nan", "infinity", "surrogate"]
)
async def test_values_with_no_single_json_reading_are_refused(gateway_default: Gateway, query: Any) -> None:
    result = await gateway_default.call_tool(ALICE, "crm.search", {"query": query}, "r")
    assert error(result)["code"] == "invalid_arguments"


@pytest.fixture
async def gateway_default(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway()


# --- DLP ---------------------------------------------------------------------------------------------------


def database_bytes(deployment: Deployment) -> bytes:
    folder = deployment.database.parent
    return b"".join(path.read_bytes() for path in folder.glob("audit.db*"))


async def test_internal_default_flags_findings_by_rule_and_path_and_never_stores_the_value(
    deployment: Deployment, gateway_default: Gateway
) -> None:
    summary = f"customer says card {CARD} and mail {EMAIL}"
    result = await gateway_default.call_tool(ALICE, "tickets.create", {"customer_id": "c-100", "summary": summary}, "r")
    assert not result.is_error
    assert result.structured_content["summary"] == summary  # flag: passes unchanged
    decision = next(row for row in rows(gateway_default) if row["outcome"] == "started")
    detail = json.loads(decision["detail"])
    assert detail["dlp_action"] == "flag"
    assert {(f["rule"], f["path"]) for f in detail["dlp"]} == {
        ("card", "arguments/summary"),
        ("email", "arguments/summary"),
    }
    outcome = rows(gateway_default)[-1]
    assert {f["path"] for f in json.loads(outcome["detail"])["dlp"]} >= {"result/structured/summary"}
    stored = database_bytes(deployment)
    assert EMAIL.encode() not in stored
    assert CARD.encode() not in stored
    assert CARD.replace(" ", "").encode() not in stored


async def test_redact_sends_the_backend_redacted_arguments(
    deployment: Deployment, make_gateway: GatewayFactory
) -> None:
    configure(deployment, "internal", "tickets.create", dlp="redact")
    gateway = make_gateway()
    summary = f"refund to card {CARD.replace(' ', chr(0x200B))} please"
    result = await gateway.call_tool(ALICE, "tickets.create", {"customer_id": "c-100", "summary": summary}, "r")
    assert not result.is_error
    # The example API echoes the summary it received.
    assert result.structured_content["summary"] == "refund to card [REDACTED:card] please"
    started = next(row for row in rows(gateway) if row["outcome"] == "started")
    assert "forwarded_digest" in json.loads(started["detail"])


async def test_block_refuses_before_the_backend_and_names_rules_not_values(
    deployment: Deployment, make_gateway: GatewayFactory, example_api: ExampleApi
) -> None:
    configure(deployment, "internal", dlp="block")
    gateway = make_gateway()
    before = len(example_api.seen())
    result = await gateway.call_tool(ALICE, "crm.search", {"query": f"mail {EMAIL}"}, "r")
    body = error(result)
    assert body["code"] == "dlp_blocked"
    assert "email" in body["message"]
    assert EMAIL not in json.dumps(body)
    assert len(example_api.seen()) == before
    last = rows(gateway)[-1]
    assert (last["event"], last["decision"], last["outcome"]) == ("tools/call", "allow", "dlp_blocked")


async def test_partner_catalogs_block_by_default_and_outputs_are_scanned(
    deployment: Deployment, make_gateway: GatewayFactory
) -> None:
    configure(deployment, "partner", dlp=None)  # the shipped file states the default; test the default itself
    configure(deployment, "internal", dlp=None)
    gateway = make_gateway()
    assert all(tool.dlp == "block" for tool in gateway.catalogs.tools("partner"))
    assert gateway.catalogs.lookup("internal", "crm.search").dlp == "flag"
    configure(deployment, "internal", "crm.customer_lookup", dlp="block")
    gateway = make_gateway()
    clean = await gateway.call_tool(ALICE, "crm.customer_lookup", {"customer_id": "c-100"}, "r")
    assert not clean.is_error
    leaking = await gateway.call_tool(ALICE, "crm.customer_lookup", {"customer_id": "c-200"}, "r")
    assert error(leaking)["code"] == "dlp_blocked"
    assert "grace" not in json.dumps(leaking.model_dump()).lower()
    last = rows(gateway)[-1]
    assert (last["event"], last["outcome"]) == ("tools/call.result", "dlp_blocked")
    assert json.loads(last["detail"])["dlp"][0]["path"].startswith("result/")


async def test_redact_rewrites_results(deployment: Deployment, make_gateway: GatewayFactory) -> None:
    configure(deployment, "internal", "crm.customer_lookup", dlp="redact")
    gateway = make_gateway()
    result = await gateway.call_tool(ALICE, "crm.customer_lookup", {"customer_id": "c-200"}, "r")
    assert not result.is_error
    assert result.structured_content["email"] == "[REDACTED:email]"
    assert all("grace@" not in block.text for block in result.content)


async def test_a_catalog_with_an_unknown_dlp_action_does_not_load(
    deployment: Deployment, make_gateway: GatewayFactory
) -> None:
    configure(deployment, "partner", dlp="off")
    with pytest.raises(ConfigError, match="dlp"):
        make_gateway()


# --- end to end: the real mcp client over stdio and streamable HTTP ------------------------------------------


@pytest.mark.parametrize(("transport", "mode"), [("stdio", "legacy"), ("streamable-http", "2026-07-28")])
async def test_refusals_reach_real_clients_with_stable_codes(deployment: Deployment, transport: str, mode: str) -> None:
    import subprocess
    import sys

    from tests.conftest import stop, wait_http
    from tests.test_transports import connect

    configure(deployment, "internal", "crm.search", rate_limit="2/hour")
    configure(deployment, "internal", "tickets.create", dlp="block")
    process = subprocess.Popen(
        [sys.executable, "-m", "mcp_gateway", "serve", "--transport", "streamable-http"],
        env=deployment.env(),
        cwd=deployment.root,
    )
    try:
        wait_http(f"http://127.0.0.1:{deployment.port}/healthz", process)
        token = deployment.mint("alice", ("support",), "internal")
        async with connect(transport, mode, deployment, token) as client:
            outcomes = [await client.call_tool("crm.search", {"query": "ada"}) for _ in range(3)]
            blocked = await client.call_tool("tickets.create", {"customer_id": "c-100", "summary": f"card {CARD}"})
    finally:
        stop(process)
    assert [result.is_error for result in outcomes] == [False, False, True]
    limited = error(outcomes[-1])
    assert (limited["code"], limited["retry_after"]) == ("rate_limited", 1800)
    body = error(blocked)
    assert body["code"] == "dlp_blocked"
    assert "4111" not in json.dumps(blocked.model_dump())
