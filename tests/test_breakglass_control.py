"""Break-glass as a control: MFA to use a grant, approvers see redacted arguments, reviews are sign-offs by a third
person on the record, late reviews are listed, and only reviewers and approvers list grants."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.breakglass import BreakGlass
from mcp_gateway.config import load_settings
from mcp_gateway.devkeys import DevKey
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import Principal
from tests.conftest import API_KEY, Deployment, ExampleApi, GatewayFactory, configure, make_deployment
from tests.test_breakglass import ALICE, Tokens, approval_id, cli, request
from tests.test_enforcement import rows

APPROVER = ("breakglass-approver",)
REVIEWER = ("breakglass-reviewer",)
ARGS = {"employee_id": "e-7"}
NO_MFA = Principal("alice", ("support",), "internal", ("pwd",), None, "test", 2**40)
SECRET = "AKIAQWERTYUIOPASDFGH"


@pytest.fixture
def tokens(deployment: Deployment, tmp_path: Path) -> Tokens:
    folder = tmp_path / "tokens"
    folder.mkdir()
    return Tokens(deployment, folder)


def approved_grant(deployment: Deployment, tokens: Tokens) -> str:
    grant = request(deployment, tokens.file("alice", ("support",)))
    approved = cli(deployment, "breakglass", "approve", grant, "--token-file", tokens.file("dave", APPROVER))
    assert approved.exit_code == 0, approved.output
    return grant


async def test_a_token_without_a_second_factor_cannot_use_a_grant(
    deployment: Deployment, tokens: Tokens, make_gateway: GatewayFactory
) -> None:
    gateway = make_gateway()
    grant = approved_grant(deployment, tokens)
    assert "hr.salary_lookup" not in [tool.name for tool in await gateway.list_tools(NO_MFA, "l")]
    with pytest.raises(MCPError):
        await gateway.call_tool(NO_MFA, "hr.salary_lookup", ARGS, "no-mfa")
    (row,) = [row for row in rows(gateway) if row["request_id"] == "no-mfa"]
    assert row["decision"] == "deny"
    assert row["rule"] == "default-deny"
    assert (
        json.loads(row["detail"])["breakglass_refused"] == f"grant {grant}: the calling token proves no second factor"
    )
    assert not (await gateway.call_tool(ALICE, "hr.salary_lookup", ARGS, "mfa")).is_error


async def test_mfa_to_use_a_grant_can_be_switched_off(
    tmp_path: Path, example_api: ExampleApi, dev_key: DevKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = make_deployment(tmp_path, example_api, dev_key, breakglass={"use_requires_mfa": False})
    folder = tmp_path / "tokens"
    folder.mkdir()
    approved_grant(deployment, Tokens(deployment, folder))
    from mcp_gateway.server import build_gateway

    monkeypatch.setenv("INVENTORY_API_KEY", API_KEY)
    gateway = build_gateway(load_settings(deployment.config))
    try:
        assert not (await gateway.call_tool(NO_MFA, "hr.salary_lookup", ARGS, "off")).is_error
    finally:
        await gateway.aclose()
        gateway.audit.close()


async def test_the_approver_sees_the_arguments_redacted_never_the_secret(
    deployment: Deployment, tokens: Tokens, make_gateway: GatewayFactory
) -> None:
    configure(deployment, "internal", "tickets.create", approval="required", dlp="flag")
    gateway = make_gateway()
    arguments = {"customer_id": "c-100", "summary": f"rotate key {SECRET} for ada@example.com"}
    held = approval_id(await gateway.call_tool(ALICE, "tickets.create", arguments, "a"))
    unprivileged = cli(deployment, "approval", "show", held, "--token-file", tokens.file("bob", ("support",)))
    assert unprivileged.exit_code == 1

    shown = cli(deployment, "approval", "show", held, "--token-file", tokens.file("dave", APPROVER))
    assert shown.exit_code == 0, shown.output
    assert "[REDACTED:api_key]" in shown.output
    assert "[REDACTED:email]" in shown.output
    assert "c-100" in shown.output
    assert SECRET not in shown.output
    assert "ada@example.com" not in shown.output
    # Nor anywhere it is kept: the table or the trail.
    assert SECRET.encode() not in deployment.database.read_bytes()
    listed = cli(deployment, "approval", "list", "--token-file", tokens.file("rita", REVIEWER))
    assert held in listed.output
    assert cli(deployment, "approval", "list", "--token-file", tokens.file("bob", ("support",))).exit_code == 1


def test_approving_and_denying_held_calls_needs_the_approver_role(
    deployment: Deployment, tokens: Tokens, gateway: Gateway
) -> None:
    # A reviewer may look, not decide.
    for verb in ("approve", "deny"):
        result = cli(deployment, "approval", verb, "0" * 16, "--token-file", tokens.file("rita", REVIEWER))
        assert result.exit_code == 1
        assert "breakglass.approver_roles" in " ".join(result.output.split())


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway()


async def test_a_review_is_a_sign_off_by_a_third_person_on_the_record(
    deployment: Deployment, tokens: Tokens, gateway: Gateway
) -> None:
    grant = approved_grant(deployment, tokens)
    assert not (await gateway.call_tool(ALICE, "hr.salary_lookup", ARGS, "used")).is_error
    note = ("--note", "checked the two lookups against incident 42")
    requester = tokens.file("alice", ("support", *REVIEWER))
    approver = tokens.file("dave", (*APPROVER, *REVIEWER))
    for who in (requester, approver):
        result = cli(deployment, "breakglass", "review", grant, "--outcome", "ok", *note, "--token-file", who)
        assert result.exit_code == 1
        assert "third person" in result.output
    nobody = tokens.file("bob", ("support",))
    assert cli(deployment, "breakglass", "review", grant, "--outcome", "ok", *note, "--token-file", nobody).exit_code
    bad = cli(deployment, "breakglass", "review", grant, "--outcome", "fine", *note, "--token-file", approver)
    assert bad.exit_code == 1

    rita = tokens.file("rita", REVIEWER)
    signed = cli(deployment, "breakglass", "review", grant, "--outcome", "misuse", *note, "--token-file", rita)
    assert signed.exit_code == 0, signed.output
    again = cli(deployment, "breakglass", "review", grant, "--outcome", "ok", *note, "--token-file", rita)
    assert again.exit_code == 1
    assert "already reviewed" in again.output
    reviews = [row for row in rows(gateway) if row["event"] == "breakglass.review"]
    assert [row["outcome"] for row in reviews] == ["refused"] * 2 + ["refused"] + ["ok", "refused"]
    detail = json.loads(reviews[3]["detail"])
    assert detail["grant"] == grant
    assert detail["review"]["outcome"] == "misuse"
    assert detail["review"]["note"] == note[1]
    assert detail["actor"]["sub"] == "rita"
    assert reviews[3]["subject"] == "rita"
    report = cli(deployment, "breakglass", "review", grant, "--token-file", rita)
    assert "reviewed misuse by rita" in report.output
    assert "1 calls under this grant" in report.output


def test_overdue_lists_ended_grants_not_reviewed_in_time(deployment: Deployment, tokens: Tokens) -> None:
    settings = load_settings(deployment.config)
    long_ago = time.time() - settings.breakglass.review_within - 3600
    audit = AuditLog(settings.database_url)
    store = BreakGlass(settings.database_url, settings.breakglass, audit, clock=lambda: long_ago)
    dave = Principal("dave", APPROVER, "internal", ("hwk",), None, "test", 2**40)
    try:
        late = store.request(ALICE, "hr.salary_lookup", "incident 41: payroll outage", 600, tool_exists=True)
        store.approve(dave, late.id)
        reviewed = store.request(ALICE, "hr.salary_lookup", "incident 40: payroll outage", 600, tool_exists=True)
        store.approve(dave, reviewed.id)
        never_approved = store.request(ALICE, "hr.salary_lookup", "incident 39: payroll outage", 600, tool_exists=True)
    finally:
        store.close()
        audit.close()
    fresh = approved_grant(deployment, tokens)  # still running: not due
    rita = tokens.file("rita", REVIEWER)
    signed = cli(deployment, "breakglass", "review", reviewed.id, "--outcome", "ok", "--note", "all calls expected",
                 "--token-file", rita)  # fmt: skip
    assert signed.exit_code == 0, signed.output
    overdue = cli(deployment, "breakglass", "list", "--overdue", "--token-file", rita)
    assert overdue.exit_code == 0, overdue.output
    assert late.id in overdue.output
    for other in (reviewed.id, never_approved.id, fresh):
        assert other not in overdue.output
    everything = cli(deployment, "breakglass", "list", "--token-file", rita)
    assert all(grant in everything.output for grant in (late.id, reviewed.id, never_approved.id, fresh))
