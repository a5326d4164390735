"""Break-glass grants and held calls: separation of duties on the command line, effect in the gateway."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from typer.testing import CliRunner, Result

from mcp_gateway.breakglass import BreakGlass, parse_ttl
from mcp_gateway.cli.app import app
from mcp_gateway.errors import BreakGlassError
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import Principal
from tests.conftest import Deployment, ExampleApi, GatewayFactory, configure
from tests.test_enforcement import error, rows

ALICE = Principal("alice", ("support",), "internal", ("pwd", "mfa"), None, "test", 2**40)
BOB = Principal("bob", ("support",), "internal", ("pwd",), None, "test", 2**40)


class Tokens:
    def __init__(self, deployment: Deployment, folder: Path) -> None:
        self.deployment = deployment
        self.folder = folder

    def file(self, subject: str, roles: tuple[str, ...], amr: tuple[str, ...] = ("pwd", "mfa")) -> Path:
        path = self.folder / f"{subject}-{'-'.join(roles)}-{'-'.join(amr)}.jwt"
        path.write_text(self.deployment.mint(subject, roles, "internal", amr=amr))
        return path


@pytest.fixture
def tokens(deployment: Deployment, tmp_path: Path) -> Tokens:
    folder = tmp_path / "tokens"
    folder.mkdir()
    return Tokens(deployment, folder)


def cli(deployment: Deployment, *args: str | Path) -> Result:
    env = {"COLUMNS": "1000", "MCP_GATEWAY_CONFIG": str(deployment.config), "MCP_GATEWAY_TOKEN": ""}
    return CliRunner().invoke(app, [str(arg) for arg in args], env=env, catch_exceptions=False)


def request(deployment: Deployment, token: Path, tool: str = "hr.salary_lookup", ttl: str = "30m") -> str:
    result = cli(deployment, "breakglass", "request", "--tool", tool, "--reason", "incident 42: payroll outage",
                 "--ttl", ttl, "--token-file", token)  # fmt: skip
    assert result.exit_code == 0, result.output
    found = re.search(r"requested grant ([0-9a-f]{16})", result.output)
    assert found is not None
    return found.group(1)


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway()


@pytest.mark.parametrize(
    ("amr", "tool", "ttl", "reason", "message"),
    [
        (("pwd",), "hr.salary_lookup", "30m", "incident 42: payroll outage", "second factor"),
        (("pwd", "mfa"), "hr.salary_lookup", "2h", "incident 42: payroll outage", "at most 3600"),
        (("pwd", "mfa"), "hr.salary_lookup", "30m", "because", "at least 10"),
        (("pwd", "mfa"), "hr.nothing", "30m", "incident 42: payroll outage", "not a tool"),
        (("pwd", "mfa"), "hr.salary_lookup", "soon", "incident 42: payroll outage", "not a duration"),
    ],
)
def test_requests_need_mfa_a_reason_a_bounded_ttl_and_a_real_tool(
    deployment: Deployment, tokens: Tokens, amr: tuple[str, ...], tool: str, ttl: str, reason: str, message: str
) -> None:
    token = tokens.file("alice", ("support",), amr)
    result = cli(deployment, "breakglass", "request", "--tool", tool, "--reason", reason, "--ttl", ttl,
                 "--token-file", token)  # fmt: skip
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())


def test_nobody_approves_their_own_request_and_approvers_need_the_role_and_mfa(
    deployment: Deployment, tokens: Tokens
) -> None:
    grant = request(deployment, tokens.file("alice", ("support", "breakglass-approver")))
    refusals = {
        "self": tokens.file("alice", ("support", "breakglass-approver")),
        "no role": tokens.file("bob", ("support",)),
        "no mfa": tokens.file("carol", ("breakglass-approver",), ("pwd",)),
    }
    for why, token in refusals.items():
        result = cli(deployment, "breakglass", "approve", grant, "--token-file", token)
        assert result.exit_code == 1, why
    # Listing grants needs a reviewer or approver role.
    assert cli(deployment, "breakglass", "list", "--token-file", refusals["no role"]).exit_code == 1
    listed = cli(deployment, "breakglass", "list", "--token-file", tokens.file("rita", ("breakglass-reviewer",)))
    assert "pending" in listed.output
    approved = cli(
        deployment, "breakglass", "approve", grant, "--token-file", tokens.file("dave", ("breakglass-approver",))
    )
    assert approved.exit_code == 0, approved.output
    again = cli(
        deployment, "breakglass", "approve", grant, "--token-file", tokens.file("erin", ("breakglass-approver",))
    )
    assert again.exit_code == 1
    assert "approved, not pending" in again.output


async def test_a_grant_allows_exactly_that_subject_and_tool_and_is_audited_until_revoked(
    deployment: Deployment, tokens: Tokens, gateway: Gateway, example_api: ExampleApi
) -> None:
    with pytest.raises(MCPError):
        await gateway.call_tool(ALICE, "hr.salary_lookup", {"employee_id": "e-7"}, "r0")
    grant = request(deployment, tokens.file("alice", ("support",)))
    with pytest.raises(MCPError):  # pending: nothing yet
        await gateway.call_tool(ALICE, "hr.salary_lookup", {"employee_id": "e-7"}, "r1")
    cli(deployment, "breakglass", "approve", grant, "--token-file", tokens.file("dave", ("breakglass-approver",)))

    assert "hr.salary_lookup" in [tool.name for tool in await gateway.list_tools(ALICE, "l")]
    assert "hr.salary_lookup" not in [tool.name for tool in await gateway.list_tools(BOB, "l")]
    result = await gateway.call_tool(ALICE, "hr.salary_lookup", {"employee_id": "e-7"}, "r2")
    assert not result.is_error
    with pytest.raises(MCPError):
        await gateway.call_tool(BOB, "hr.salary_lookup", {"employee_id": "e-7"}, "r3")
    decision, outcome = [row for row in rows(gateway) if row["request_id"] == "r2"]
    assert decision["rule"] == outcome["rule"] == f"breakglass:{grant}"
    assert json.loads(decision["detail"])["breakglass"] == grant
    assert json.loads(decision["detail"])["policy_rule"] == "default-deny"

    review = cli(
        deployment, "breakglass", "review", grant, "--token-file", tokens.file("dave", ("breakglass-approver",))
    )
    assert review.exit_code == 0
    assert "r2" in review.output
    assert "1 calls under this grant" in review.output

    revoked = cli(deployment, "breakglass", "revoke", grant, "--token-file", tokens.file("alice", ("support",)))
    assert revoked.exit_code == 0, revoked.output
    with pytest.raises(MCPError):
        await gateway.call_tool(ALICE, "hr.salary_lookup", {"employee_id": "e-7"}, "r4")
    events = [row["event"] for row in rows(gateway) if row["event"].startswith("breakglass.")]
    assert events == ["breakglass.request", "breakglass.approve", "breakglass.revoke"]


async def test_a_grant_never_switches_off_rate_limits_or_dlp(
    deployment: Deployment, tokens: Tokens, make_gateway: GatewayFactory
) -> None:
    configure(deployment, "internal", "hr.salary_lookup", rate_limit="1/hour")
    configure(deployment, "internal", "tickets.create", dlp="block")
    gateway = make_gateway()
    for tool in ("hr.salary_lookup", "tickets.create"):
        grant = request(deployment, tokens.file("bob", ("nobody",)), tool=tool)
        cli(deployment, "breakglass", "approve", grant, "--token-file", tokens.file("dave", ("breakglass-approver",)))
    nobody = Principal("bob", ("nobody",), "internal", ("otp",), None, "test", 2**40)  # a grant's use needs MFA
    assert not (await gateway.call_tool(nobody, "hr.salary_lookup", {"employee_id": "e-7"}, "a")).is_error
    limited = await gateway.call_tool(nobody, "hr.salary_lookup", {"employee_id": "e-7"}, "b")
    assert error(limited)["code"] == "rate_limited"
    blocked = await gateway.call_tool(
        nobody, "tickets.create", {"customer_id": "c-1", "summary": "mail ada@example.com"}, "c"
    )
    assert error(blocked)["code"] == "dlp_blocked"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(gateway: Gateway, deployment: Deployment) -> Iterator[tuple[BreakGlass, Clock]]:
    clock = Clock()
    store = BreakGlass(f"sqlite:///{deployment.database}", gateway.settings.breakglass, gateway.audit, clock)
    gateway.breakglass = store
    yield store, clock
    store.close()


async def test_grants_expire_on_their_own_and_pending_requests_lapse(
    gateway: Gateway, store: tuple[BreakGlass, Clock]
) -> None:
    breakglass, clock = store
    approver = Principal("dave", ("breakglass-approver",), "internal", ("hwk",), None, "test", 2**40)
    grant = breakglass.request(ALICE, "hr.salary_lookup", "incident 42: payroll outage", 600, tool_exists=True)
    breakglass.approve(approver, grant.id)
    clock.now += 599
    assert not (await gateway.call_tool(ALICE, "hr.salary_lookup", {"employee_id": "e-7"}, "a")).is_error
    clock.now += 1
    with pytest.raises(MCPError):
        await gateway.call_tool(ALICE, "hr.salary_lookup", {"employee_id": "e-7"}, "b")
    assert breakglass.get(grant.id).state == "expired"

    stale = breakglass.request(ALICE, "hr.salary_lookup", "incident 43: payroll outage", 600, tool_exists=True)
    clock.now += gateway.settings.breakglass.pending_ttl
    with pytest.raises(BreakGlassError, match="expired, not pending"):
        breakglass.approve(approver, stale.id)


def test_partner_callers_cannot_request(gateway: Gateway, store: tuple[BreakGlass, Clock]) -> None:
    partner = Principal("acme", ("partner",), "partner", ("mfa",), None, "test", 2**40)
    with pytest.raises(BreakGlassError, match="partner"):
        store[0].request(partner, "orders.cancel", "incident 42: payroll outage", 600, tool_exists=True)


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("1h30m", 5400), ("900", 900), ("2d", 172800)])
def test_ttls_parse(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


# --- held calls --------------------------------------------------------------------------------------------


def approval_id(result: Any) -> str:
    body = error(result)
    assert body["code"] == "approval_required"
    return str(body["approval_id"])


async def test_a_held_call_runs_once_after_a_second_person_approves_that_exact_call(
    deployment: Deployment, tokens: Tokens, make_gateway: GatewayFactory, example_api: ExampleApi
) -> None:
    configure(deployment, "internal", "tickets.create", approval="required")
    gateway = make_gateway()
    arguments = {"customer_id": "c-100", "summary": "refund the duplicate charge"}
    before = len(example_api.seen())
    first = approval_id(await gateway.call_tool(ALICE, "tickets.create", arguments, "a"))
    assert approval_id(await gateway.call_tool(ALICE, "tickets.create", arguments, "b")) == first
    assert len(example_api.seen()) == before

    own = cli(deployment, "approval", "approve", first, "--token-file", tokens.file("alice", ("breakglass-approver",)))
    assert own.exit_code == 1
    approved = cli(
        deployment, "approval", "approve", first, "--token-file", tokens.file("dave", ("breakglass-approver",))
    )
    assert approved.exit_code == 0, approved.output

    changed = {**arguments, "summary": "refund both charges"}
    assert approval_id(await gateway.call_tool(ALICE, "tickets.create", changed, "c")) != first
    assert approval_id(await gateway.call_tool(BOB, "tickets.create", arguments, "d")) != first
    result = await gateway.call_tool(ALICE, "tickets.create", arguments, "e")
    assert not result.is_error
    assert json.loads(next(row for row in rows(gateway) if row["request_id"] == "e")["detail"])["approval"] == first
    # Consumed: the same call again needs a new approval.
    assert approval_id(await gateway.call_tool(ALICE, "tickets.create", arguments, "f")) != first


async def test_an_approval_is_bound_to_the_policy_version(
    deployment: Deployment, tokens: Tokens, make_gateway: GatewayFactory
) -> None:
    configure(deployment, "internal", "tickets.create", approval="required")
    gateway = make_gateway()
    arguments = {"customer_id": "c-100", "summary": "refund the duplicate charge"}
    held = approval_id(await gateway.call_tool(ALICE, "tickets.create", arguments, "a"))
    cli(deployment, "approval", "approve", held, "--token-file", tokens.file("dave", ("breakglass-approver",)))
    with (deployment.policies / "internal.csv").open("a") as handle:
        handle.write("p, role:auditor, internal, crm.search, call, allow\n")
    assert gateway.reload().policy_changed
    assert approval_id(await gateway.call_tool(ALICE, "tickets.create", arguments, "b")) != held
