"""The transport-free core, driven directly: argument limits, reloads, and failing closed on audit."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from mcp_gateway.config import load_settings
from mcp_gateway.errors import UnavailableError
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import Principal
from mcp_gateway.policy import PolicySnapshot
from mcp_gateway.server import build_gateway
from tests.conftest import API_KEY, Deployment, ExampleApi

ALICE = Principal("alice", ("support",), "internal", (), None, "test", 2**40)
HR = Principal("hana", ("hr",), "internal", (), None, "test", 2**40)


@pytest.fixture
async def gateway(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("INVENTORY_API_KEY", API_KEY)  # the backends' server-side credential
    gateway = build_gateway(load_settings(deployment.config))
    yield gateway
    await gateway.aclose()
    gateway.audit.close()


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def rows(gateway: Gateway) -> list[dict[str, Any]]:
    return list(gateway.audit.iter_rows())


def error_code(result: Any) -> str:
    assert result.is_error
    return str(result.structured_content["error"]["code"])


@pytest.mark.parametrize(
    ("arguments", "why"),
    [
        pytest.param({"query": "a" * 70_000}, "size", id="oversized"),
        pytest.param({"query": "ada", "extra": {"x": 1}}, "schema", id="unexpected-property"),
        pytest.param({"query": 5}, "schema", id="wrong-type"),
        pytest.param({}, "schema", id="missing-required"),
        pytest.param({"query": "ada", "deep": nested(40)}, "depth", id="too-deep"),
    ],
)
async def test_bad_arguments_are_refused_before_the_backend(
    gateway: Gateway, example_api: ExampleApi, arguments: dict[str, Any], why: str
) -> None:
    before = len(example_api.seen())
    result = await gateway.call_tool(ALICE, "crm.search", arguments, "req-1")
    assert error_code(result) == "invalid_arguments"
    assert len(example_api.seen()) == before
    last = rows(gateway)[-1]
    assert (last["event"], last["decision"], last["outcome"], last["tool"]) == (
        "tools/call",
        "allow",
        "invalid_arguments",
        "crm.search",
    )


async def test_schema_errors_name_the_argument_not_its_value(gateway: Gateway) -> None:
    result = await gateway.call_tool(ALICE, "crm.customer_lookup", {"customer_id": "secret-value"}, "req-2")
    text = result.structured_content["error"]["message"]
    assert "customer_id" in text
    assert "secret-value" not in text


async def test_denied_and_unknown_calls_leave_the_same_trace_for_the_caller(gateway: Gateway) -> None:
    with pytest.raises(MCPError) as denied:
        await gateway.call_tool(ALICE, "hr.salary_lookup", {"employee_id": "e-7"}, "r1")
    with pytest.raises(MCPError) as unknown:
        await gateway.call_tool(ALICE, "hr.nothing", {"employee_id": "e-7"}, "r2")
    assert (denied.value.code, denied.value.message) == (unknown.value.code, unknown.value.message)
    deny_row, unknown_row = rows(gateway)[-2:]
    assert deny_row["rule"] == "default-deny"
    assert unknown_row["rule"] == "unknown-tool"


async def test_a_call_is_refused_when_its_audit_row_cannot_be_written(
    gateway: Gateway, deployment: Deployment, example_api: ExampleApi
) -> None:
    with sqlite3.connect(deployment.database) as db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON audit_record BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    before = len(example_api.seen())
    result = await gateway.call_tool(ALICE, "crm.search", {"query": "ada"}, "req-3")
    assert error_code(result) == "unavailable"
    assert len(example_api.seen()) == before, "the backend must not be called without a decision on record"
    with pytest.raises(MCPError) as listed:
        await gateway.list_tools(ALICE, "req-4")
    assert listed.value.data["code"] == "unavailable"
    # Reachable but refusing records: not ready, since no call could be served.
    ready, reason = gateway.ready()
    assert ready is False
    assert reason is not None
    assert "disk full" in reason
    with sqlite3.connect(deployment.database) as db:
        db.execute("DROP TRIGGER refuse")
    assert gateway.ready() == (True, None)
    assert all(row["event"] != "readiness.probe" for row in rows(gateway)), "the probe's record is rolled back"


async def test_the_result_is_withheld_when_the_outcome_cannot_be_recorded(
    gateway: Gateway, deployment: Deployment, example_api: ExampleApi
) -> None:
    with sqlite3.connect(deployment.database) as db:
        db.execute(
            "CREATE TRIGGER refuse_result BEFORE INSERT ON audit_record WHEN NEW.event = 'tools/call.result' "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    before = len(example_api.seen())
    result = await gateway.call_tool(ALICE, "crm.customer_lookup", {"customer_id": "c-100"}, "req-5")
    assert len(example_api.seen()) == before + 1, "the backend answered; only the outcome row failed"
    assert error_code(result) == "unavailable"
    assert "Ada" not in str(result.model_dump())
    assert rows(gateway)[-1]["outcome"] == "started"


async def test_audit_chain_links_every_row(gateway: Gateway) -> None:
    await gateway.list_tools(ALICE, "a")
    await gateway.call_tool(ALICE, "crm.search", {"query": "ada"}, "b")
    trail = rows(gateway)
    assert trail[0]["prev_hash"] == "0" * 64
    assert all(later["prev_hash"] == earlier["hash"] for earlier, later in itertools.pairwise(trail))


def _append(path: Path, line: str) -> None:
    with path.open("a") as handle:
        handle.write(line + "\n")


async def test_policy_reload_swaps_in_a_good_policy_and_audits_it(gateway: Gateway, deployment: Deployment) -> None:
    assert "hr.salary_lookup" not in [tool.name for tool in gateway.visible_tools(ALICE)]
    _append(deployment.policies / "internal.csv", "p, user:alice, internal, hr.salary_lookup, call, allow")
    report = gateway.reload(actor="test")
    assert report.policy_changed
    assert not report.errors
    assert "hr.salary_lookup" in [tool.name for tool in gateway.visible_tools(ALICE)]
    change = rows(gateway)[-1]
    assert (change["event"], change["outcome"], change["subject"]) == ("policy.reload", "ok", "test")
    assert "p, user:alice, internal, hr.salary_lookup, call, allow" in change["detail"]


async def test_a_broken_policy_keeps_the_last_good_one_and_is_audited(gateway: Gateway, deployment: Deployment) -> None:
    version = gateway.policy.snapshot.version
    _append(deployment.policies / "internal.csv", "p, role:support, internal, hr.*, call")  # missing effect
    report = gateway.reload(actor="test")
    assert report.errors
    assert not report.policy_changed
    assert gateway.policy.snapshot.version == version
    assert "hr.salary_lookup" not in [tool.name for tool in gateway.visible_tools(ALICE)]
    change = rows(gateway)[-1]
    assert (change["event"], change["decision"], change["outcome"]) == ("policy.reload", "error", "rejected")
    assert "internal.csv" in change["detail"]


async def test_catalog_reload_publishes_new_tools_and_keeps_last_good_on_error(
    gateway: Gateway, deployment: Deployment
) -> None:
    catalog = deployment.root / "catalogs" / "internal.yaml"
    original = catalog.read_text()
    catalog.write_text(original.replace("name: crm.search", "name: crm.find"))
    report = gateway.reload()
    assert report.catalogs_changed
    assert "crm.find" in [tool.name for tool in gateway.visible_tools(ALICE)]
    change = rows(gateway)[-1]
    assert change["event"] == "catalog.reload"
    assert '"added":["crm.find"]' in change["detail"]

    catalog.write_text(original.replace("name: crm.search", "name: ../crm"))
    report = gateway.reload()
    assert report.errors
    assert not report.catalogs_changed
    assert "crm.find" in [tool.name for tool in gateway.visible_tools(ALICE)]
    assert rows(gateway)[-1]["outcome"] == "rejected"


async def test_unchanged_files_do_not_write_reload_rows(gateway: Gateway) -> None:
    count = len(rows(gateway))
    report = gateway.reload()
    assert not report.policy_changed
    assert not report.catalogs_changed
    assert not report.errors
    assert len(rows(gateway)) == count


async def test_role_inheritance_and_token_roles_both_grant(gateway: Gateway, deployment: Deployment) -> None:
    lead = Principal("lee", ("support_lead",), "internal", (), None, "test", 2**40)
    assert [tool.name for tool in gateway.visible_tools(lead)] == [tool.name for tool in gateway.visible_tools(ALICE)]
    assert "hr.salary_lookup" in [tool.name for tool in gateway.visible_tools(HR)]


async def test_a_broken_file_left_in_place_is_reported_once(gateway: Gateway, deployment: Deployment) -> None:
    _append(deployment.policies / "internal.csv", "p, broken")
    catalog = deployment.root / "catalogs" / "partner.yaml"
    catalog.write_text(catalog.read_text() + "\nnot: [valid")
    first = gateway.reload()
    count = len(rows(gateway))
    again = [gateway.reload() for _ in range(3)]
    assert len(first.errors) == 2
    assert all(not report.errors for report in again)
    assert len(rows(gateway)) == count


async def test_allowed_call_reaches_the_backend_and_records_both_rows(gateway: Gateway) -> None:
    result = await gateway.call_tool(ALICE, "crm.customer_lookup", {"customer_id": "c-100"}, "req-ok")
    assert not result.is_error
    started, outcome = rows(gateway)[-2:]
    assert (started["event"], started["outcome"], outcome["event"], outcome["outcome"]) == (
        "tools/call",
        "started",
        "tools/call.result",
        "ok",
    )
    assert started["args_digest"] == outcome["args_digest"] is not None


async def test_a_reload_whose_audit_row_fails_changes_nothing_and_is_retried(
    gateway: Gateway, deployment: Deployment
) -> None:
    trigger = (
        "CREATE TRIGGER refuse_reload BEFORE INSERT ON audit_record WHEN NEW.event LIKE '%.reload' "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    with sqlite3.connect(deployment.database) as db:
        db.execute(trigger)
    _append(deployment.policies / "internal.csv", "p, user:alice, internal, hr.salary_lookup, call, allow")
    catalog = deployment.root / "catalogs" / "internal.yaml"
    catalog.write_text(catalog.read_text().replace("name: crm.search", "name: crm.find"))
    version = gateway.policy.snapshot.version
    with pytest.raises(UnavailableError):
        gateway.reload()
    assert gateway.policy.snapshot.version == version
    assert "hr.salary_lookup" not in [tool.name for tool in gateway.visible_tools(ALICE)]
    with pytest.raises(UnavailableError):
        gateway.reload()  # still unrecorded: still not applied

    with sqlite3.connect(deployment.database) as db:
        db.execute("DROP TRIGGER refuse_reload")
    report = gateway.reload()
    assert report.policy_changed
    assert report.catalogs_changed
    names = [tool.name for tool in gateway.visible_tools(ALICE)]
    assert "hr.salary_lookup" in names
    assert "crm.find" in names
    assert [row["event"] for row in rows(gateway)[-2:]] == ["policy.reload", "catalog.reload"]


async def test_nan_arguments_are_refused_before_the_schema_and_the_backend(
    gateway: Gateway, example_api: ExampleApi
) -> None:
    before = len(example_api.seen())
    result = await gateway.call_tool(ALICE, "crm.search", {"query": float("nan")}, "req-nan")
    assert error_code(result) == "invalid_arguments"
    assert len(example_api.seen()) == before


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("x" * 3_000_000, id="three-megabytes"),
        pytest.param("crm.search\x1b[2J\x1b[31mRED", id="terminal-escapes"),
        pytest.param("crm.search\u2028forged line", id="line-separator"),
        pytest.param("crm\ud800", id="lone-surrogate"),
    ],
)
async def test_caller_chosen_invalid_tool_names_are_not_stored_verbatim(gateway: Gateway, name: str) -> None:
    with pytest.raises(MCPError) as caught:
        await gateway.call_tool(ALICE, name, {}, "req-name")
    assert caught.value.data["code"] == "unknown_tool"
    row = rows(gateway)[-1]
    assert row["tool"].startswith("invalid:")
    assert len(row["tool"]) == len("invalid:") + 32
    assert len(row["detail"]) < 400
    assert "\x1b" not in row["detail"]
    assert "\u2028" not in row["detail"]


async def test_outcome_only_read_tool_writes_one_row_after_the_backend(
    deployment: Deployment, example_api: ExampleApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import configure

    configure(deployment, "internal", "crm.search", audit="outcome-only")
    monkeypatch.setenv("INVENTORY_API_KEY", API_KEY)
    gateway = build_gateway(load_settings(deployment.config))
    try:
        before = len(rows(gateway))
        result = await gateway.call_tool(ALICE, "crm.search", {"query": "ada"}, "req-read")
        assert not result.is_error
        written = rows(gateway)[before:]
        assert [(row["event"], row["decision"], row["outcome"]) for row in written] == [("tools/call", "allow", "ok")]
        assert written[0]["args_digest"] is not None
        assert written[0]["latency_ms"] is not None

        # The result is still withheld when its one row cannot be committed.
        with sqlite3.connect(deployment.database) as db:
            db.execute("CREATE TRIGGER refuse BEFORE INSERT ON audit_record BEGIN SELECT RAISE(ABORT, 'full'); END")
        calls = len(example_api.seen())
        withheld = await gateway.call_tool(ALICE, "crm.search", {"query": "ada"}, "req-read-2")
        assert len(example_api.seen()) == calls + 1
        assert error_code(withheld) == "unavailable"
        assert "Ada" not in str(withheld.model_dump())
    finally:
        await gateway.aclose()
        gateway.audit.close()


def test_outcome_only_is_refused_for_a_tool_not_marked_read_only(deployment: Deployment) -> None:
    from mcp_gateway.errors import ConfigError
    from tests.conftest import configure

    configure(deployment, "internal", "tickets.create", audit="outcome-only")
    with pytest.raises(ConfigError) as refused:
        build_gateway(load_settings(deployment.config))
    assert "read_only_hint" in str(refused.value)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("hr.salary_lookup", id="hidden"),
        pytest.param("hr.nothing", id="unknown"),
        pytest.param("crm.nothing", id="unknown-but-a-policy-glob-allows-it"),
        pytest.param("orders.status", id="in-another-catalog"),
        pytest.param("x" * 5000, id="cannot-name-a-tool"),
    ],
)
async def test_every_refused_name_does_the_same_work_as_a_hidden_tool(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # The timing itself is measured in the slow suite (test_advisories); here, that the same steps run.
    assert gateway.breakglass is not None
    looked_up: list[str] = []
    decided: list[str] = []
    real_lookup, real_decide = gateway.breakglass.active_grant, PolicySnapshot.decide

    def active_grant(subject: str, catalog: str, tool: str) -> str | None:
        looked_up.append(tool)
        return real_lookup(subject, catalog, tool)

    def decide(
        snapshot: PolicySnapshot, subject: str, roles: Any, catalog: str, tool: str, action: str = "call"
    ) -> Any:
        decided.append(tool)
        return real_decide(snapshot, subject, roles, catalog, tool, action)

    monkeypatch.setattr(gateway.breakglass, "active_grant", active_grant)
    monkeypatch.setattr(PolicySnapshot, "decide", decide)
    with pytest.raises(MCPError) as caught:
        await gateway.call_tool(ALICE, name, {}, "req-same-work")
    assert caught.value.data["code"] == "unknown_tool"
    assert len(looked_up) == len(decided) == 1
    assert max(len(looked_up[0]), len(decided[0])) <= 128, "a hostile name is looked up in its bounded form"


async def test_an_allowed_call_does_not_look_for_a_grant(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    assert gateway.breakglass is not None
    monkeypatch.setattr(gateway.breakglass, "active_grant", lambda *args: pytest.fail("no lookup when allowed"))
    result = await gateway.call_tool(ALICE, "crm.search", {"query": "ada"}, "req-no-lookup")
    assert not result.is_error


class _Hanging:
    """A backend that never answers, and says when it has been reached."""

    def __init__(self) -> None:
        self.reached = anyio.Event()

    async def call(self, tool: Any, arguments: Any, call: Any) -> Any:
        self.reached.set()
        await anyio.sleep_forever()

    def describe(self, tool: Any) -> dict[str, Any]:
        return {"type": "http"}

    async def aclose(self) -> None:
        return None


async def test_a_call_whose_caller_goes_away_gets_a_cancelled_outcome(gateway: Gateway) -> None:
    backend = _Hanging()
    gateway.backends.use("http", backend)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(gateway.call_tool, ALICE, "crm.search", {"query": "ada"}, "req-gone")
            await backend.reached.wait()
            group.cancel_scope.cancel()
    decision, outcome = [row for row in rows(gateway) if row["request_id"] == "req-gone"]
    assert (decision["event"], decision["outcome"]) == ("tools/call", "started")
    assert (outcome["event"], outcome["outcome"]) == ("tools/call.result", "cancelled")
