"""Grants and held calls in the hash chain: a row the chain does not vouch for does nothing, and verify names it.

SQLite and PostgreSQL, the real gateway (in process, and over HTTP as its own process), real tokens on the CLI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from mcp_gateway.audit.grantcheck import GrantCheck
from mcp_gateway.audit.log import AuditLog
from mcp_gateway.audit.verify import verify_records
from mcp_gateway.devkeys import DevKey
from mcp_gateway.gateway import Gateway
from mcp_gateway.grantchain import call_state, grant_state, state_digest
from mcp_gateway.identity import Principal
from tests.conftest import Deployment, ExampleApi, GatewayFactory, configure, make_deployment, serving_http
from tests.test_breakglass import ALICE, Tokens, approval_id, cli, request
from tests.test_enforcement import rows

APPROVER = ("breakglass-approver",)
ARGS = {"employee_id": "e-7"}
_TABLES = ("audit_record", "audit_checkpoint", "audit_write_probe", "breakglass_grant", "held_call")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'audit.db'}"
    url: str = request.getfixturevalue("postgres_url")
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        for table in _TABLES:
            connection.execute(sqlalchemy.text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()
    return url


@pytest.fixture
def deployment(tmp_path: Path, example_api: ExampleApi, dev_key: DevKey, database_url: str) -> Deployment:
    return make_deployment(tmp_path, example_api, dev_key, database_url=database_url)


@pytest.fixture
def tokens(deployment: Deployment, tmp_path: Path) -> Tokens:
    folder = tmp_path / "tokens"
    folder.mkdir()
    return Tokens(deployment, folder)


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway()


@pytest.fixture
def sql(database_url: str) -> Iterator[sqlalchemy.Engine]:
    """Someone with write access to the database, and no business changing it."""
    engine = sqlalchemy.create_engine(database_url)
    yield engine
    engine.dispose()


def insert(engine: sqlalchemy.Engine, table: str, row: dict[str, Any]) -> None:
    names = ", ".join(row)
    execute(engine, f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + k for k in row)})", **row)  # noqa: S608


def execute(engine: sqlalchemy.Engine, statement: str, **values: Any) -> None:
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(statement), values)


def table_row(engine: sqlalchemy.Engine, table: str, row_id: str) -> dict[str, Any]:
    with engine.connect() as connection:
        query = sqlalchemy.text(f"SELECT * FROM {table} WHERE id = :id")  # noqa: S608 - the test's own table names
        found = connection.execute(query, {"id": row_id})
        return dict(found.mappings().one())


def verify_problems(database_url: str) -> list[tuple[str, str]]:
    log = AuditLog(database_url)
    try:
        key = Ed25519PrivateKey.generate().public_key()
        report = verify_records(log.iter_rows(), [], key, grants=GrantCheck(database_url).problems)
    finally:
        log.close()
    return [(problem.kind, problem.message) for problem in report.problems if problem.kind != "unsigned"]


def approved_grant(deployment: Deployment, tokens: Tokens) -> str:
    grant = request(deployment, tokens.file("alice", ("support",)))
    approved = cli(deployment, "breakglass", "approve", grant, "--token-file", tokens.file("dave", APPROVER))
    assert approved.exit_code == 0, approved.output
    return grant


async def refused(gateway: Gateway, principal: Principal, tool: str, request_id: str) -> dict[str, Any]:
    with pytest.raises(MCPError):
        await gateway.call_tool(principal, tool, ARGS, request_id)
    (row,) = [row for row in rows(gateway) if row["request_id"] == request_id]
    assert row["decision"] == "deny"
    return row


def forged_grant(tool: str = "hr.salary_lookup", **changes: Any) -> dict[str, Any]:
    now = time.time()
    row = {"id": "f" * 16, "subject": "alice", "catalog": "internal", "tool": tool, "ttl": 3600,
           "reason": "nobody asked for this", "requested_at": now, "requester_amr": "pwd,mfa", "status": "approved",
           "approver": "dave", "approved_at": now, "expires_at": now + 3600, "revoked_by": None,
           "revoked_at": None}  # fmt: skip
    row.update(changes)
    # The forger even computes the digest the gateway would: without a chain record it names nothing real.
    return {**row, "chain_seq": 1, "chain_digest": state_digest(grant_state(row))}


async def test_an_sql_inserted_grant_does_nothing_and_verify_names_it(
    deployment: Deployment, gateway: Gateway, sql: sqlalchemy.Engine, database_url: str, tokens: Tokens
) -> None:
    await refused(gateway, ALICE, "hr.salary_lookup", "before")  # the trail has records; the tables exist
    row = forged_grant()
    insert(sql, "breakglass_grant", row)

    denied = await refused(gateway, ALICE, "hr.salary_lookup", "forged")
    assert denied["rule"] == "default-deny"
    assert "hr.salary_lookup" not in [tool.name for tool in await gateway.list_tools(ALICE, "l")]
    problems = verify_problems(database_url)
    assert [kind for kind, _ in problems] == ["unrecorded-grant"]
    assert "f" * 16 in problems[0][1]
    assert "no chain record" in problems[0][1]
    listed = cli(deployment, "breakglass", "list", "--token-file", tokens.file("rita", ("breakglass-reviewer",)))
    assert "unrecorded" in listed.output
    # Nor can it be approved into being.
    assert cli(deployment, "breakglass", "approve", "f" * 16, "--token-file", tokens.file("dave", APPROVER)).exit_code


async def test_the_verify_command_fails_on_an_sql_inserted_grant(
    deployment: Deployment, gateway: Gateway, sql: sqlalchemy.Engine
) -> None:
    await refused(gateway, ALICE, "hr.salary_lookup", "before")
    assert cli(deployment, "audit", "checkpoint").exit_code == 0  # a signed trail that verifies as it stands
    assert cli(deployment, "audit", "verify").exit_code == 0
    insert(sql, "breakglass_grant", forged_grant())

    verified = cli(deployment, "audit", "verify")

    assert verified.exit_code == 1, verified.output
    assert "unrecorded-grant" in verified.output


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param("UPDATE breakglass_grant SET expires_at = expires_at + 86400", id="expiry-pushed-out"),
        pytest.param("UPDATE breakglass_grant SET tool = 'crm.search'", id="tool-changed"),
        pytest.param("UPDATE breakglass_grant SET subject = 'bob'", id="subject-changed"),
    ],
)
async def test_an_edited_grant_does_nothing_and_verify_names_it(
    deployment: Deployment,
    tokens: Tokens,
    gateway: Gateway,
    sql: sqlalchemy.Engine,
    database_url: str,
    edit: str,
) -> None:
    grant = approved_grant(deployment, tokens)
    assert not (await gateway.call_tool(ALICE, "hr.salary_lookup", ARGS, "honoured")).is_error
    assert verify_problems(database_url) == []

    execute(sql, edit)
    await refused(gateway, ALICE, "hr.salary_lookup", "edited")
    await refused(
        gateway, Principal("bob", ("nobody",), "internal", ("mfa",), None, "t", 2**40), "hr.salary_lookup", "b"
    )
    mismatches = [row for row in rows(gateway) if row["event"] == "breakglass.mismatch"]
    assert len(mismatches) == 1  # once per process, however often the row is tried
    assert grant in mismatches[0]["detail"]
    assert mismatches[0]["outcome"] == "refused"
    (problem,) = verify_problems(database_url)
    assert problem[0] == "unrecorded-grant"
    assert grant in problem[1]
    assert "differs from chain record" in problem[1]


async def test_a_revoked_grant_rolled_back_by_sql_stays_revoked(
    deployment: Deployment, tokens: Tokens, gateway: Gateway, sql: sqlalchemy.Engine, database_url: str
) -> None:
    grant = approved_grant(deployment, tokens)
    approved = table_row(sql, "breakglass_grant", grant)
    assert cli(deployment, "breakglass", "revoke", grant, "--token-file", tokens.file("dave", APPROVER)).exit_code == 0
    # Every column back as it was when approved, chain record and digest included: that record is not the latest.
    execute(
        sql,
        "UPDATE breakglass_grant SET status = 'approved', revoked_by = NULL, revoked_at = NULL, chain_seq = :seq, "
        "chain_digest = :digest WHERE id = :id",
        seq=approved["chain_seq"],
        digest=approved["chain_digest"],
        id=grant,
    )
    await refused(gateway, ALICE, "hr.salary_lookup", "rolled-back")
    (problem,) = verify_problems(database_url)
    assert "the latest for it is" in problem[1]


async def test_every_grant_change_is_a_chain_record_the_row_names(
    deployment: Deployment, tokens: Tokens, sql: sqlalchemy.Engine, gateway: Gateway
) -> None:
    grant = approved_grant(deployment, tokens)
    row = table_row(sql, "breakglass_grant", grant)
    record = next(item for item in rows(gateway) if item["id"] == row["chain_seq"])
    assert record["event"] == "breakglass.approve"
    detail = json.loads(record["detail"])
    assert detail["state"] == grant_state(row)
    assert state_digest(detail["state"]) == row["chain_digest"]
    assert detail["actor"]["sub"] == "dave"
    assert detail["actor"]["amr"] == ["pwd", "mfa"]
    assert "jti" in detail["actor"]


# --- held calls --------------------------------------------------------------------------------------------


async def test_an_sql_inserted_or_edited_approval_does_nothing_and_verify_names_it(
    deployment: Deployment, tokens: Tokens, make_gateway: GatewayFactory, sql: sqlalchemy.Engine, database_url: str
) -> None:
    configure(deployment, "internal", "tickets.create", approval="required")
    gateway = make_gateway()
    arguments = {"customer_id": "c-100", "summary": "refund the duplicate charge"}
    held = approval_id(await gateway.call_tool(ALICE, "tickets.create", arguments, "a"))
    pending = table_row(sql, "held_call", held)
    # A forged approval for exactly this call, alongside the real pending one.
    forged = {**pending, "id": "e" * 16, "status": "approved", "approver": "dave", "approved_at": time.time()}
    forged["chain_digest"] = state_digest(call_state(forged))
    insert(sql, "held_call", forged)
    assert approval_id(await gateway.call_tool(ALICE, "tickets.create", arguments, "b")) == held

    # The real one, approved and then pushed out by SQL: its expiry is the chain's.
    approved = cli(deployment, "approval", "approve", held, "--token-file", tokens.file("dave", APPROVER))
    assert approved.exit_code == 0, approved.output
    execute(sql, "UPDATE held_call SET expires_at = expires_at + 86400 WHERE id = :id", id=held)
    assert approval_id(await gateway.call_tool(ALICE, "tickets.create", arguments, "c")) not in (held, "e" * 16)
    assert [row for row in rows(gateway) if row["event"] == "approval.mismatch"]
    problems = verify_problems(database_url)
    assert sorted(kind for kind, _ in problems) == ["unrecorded-approval", "unrecorded-approval"]
    assert any("e" * 16 in message and "no chain record" in message for _, message in problems)
    assert any(held in message and "expires_at" in message for _, message in problems)


async def test_a_consumed_approval_set_approved_again_by_sql_is_not_replayed(
    deployment: Deployment, tokens: Tokens, make_gateway: GatewayFactory, sql: sqlalchemy.Engine
) -> None:
    configure(deployment, "internal", "tickets.create", approval="required")
    gateway = make_gateway()
    arguments = {"customer_id": "c-100", "summary": "refund the duplicate charge"}
    held = approval_id(await gateway.call_tool(ALICE, "tickets.create", arguments, "a"))
    cli(deployment, "approval", "approve", held, "--token-file", tokens.file("dave", APPROVER))
    approved = table_row(sql, "held_call", held)
    assert not (await gateway.call_tool(ALICE, "tickets.create", arguments, "run")).is_error
    events = [row["event"] for row in rows(gateway) if row["event"].startswith("approval.")]
    assert events == ["approval.hold", "approval.approve", "approval.consume"]
    execute(
        sql,
        "UPDATE held_call SET status = 'approved', used_at = NULL, chain_seq = :seq, chain_digest = :digest "
        "WHERE id = :id",
        seq=approved["chain_seq"],
        digest=approved["chain_digest"],
        id=held,
    )
    assert approval_id(await gateway.call_tool(ALICE, "tickets.create", arguments, "replay")) != held


# --- over HTTP: the gateway in its own process, the approval from another ----------------------------------


async def call_over_http(deployment: Deployment, token: str, tool: str) -> str:
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(f"http://127.0.0.1:{deployment.port}/mcp", http_client=http)) as client,
    ):
        try:
            result = await client.call_tool(tool, ARGS)
        except MCPError as exc:
            return str((exc.error.data or {}).get("code"))
        return "ok" if not result.is_error else str((result.structured_content or {})["error"]["code"])


async def test_over_http_a_grant_needs_mfa_in_the_calling_token_and_a_matching_row(
    deployment: Deployment, tokens: Tokens, sql: sqlalchemy.Engine
) -> None:
    with serving_http(deployment):
        with_mfa = deployment.mint("alice", ("support",), "internal", amr=("pwd", "otp"))
        without = deployment.mint("alice", ("support",), "internal", amr=("pwd",))
        assert await call_over_http(deployment, with_mfa, "hr.salary_lookup") == "unknown_tool"
        grant = approved_grant(deployment, tokens)  # another process: counts at once
        assert await call_over_http(deployment, with_mfa, "hr.salary_lookup") == "ok"
        assert await call_over_http(deployment, without, "hr.salary_lookup") == "unknown_tool"
        execute(sql, "UPDATE breakglass_grant SET expires_at = expires_at + 60 WHERE id = :id", id=grant)
        assert await call_over_http(deployment, with_mfa, "hr.salary_lookup") == "unknown_tool"
        httpx.get(f"http://127.0.0.1:{deployment.port}/healthz", timeout=10).raise_for_status()
    log = AuditLog(deployment_url(deployment))
    try:
        calls = [row for row in log.iter_rows() if row["tool"] == "hr.salary_lookup" and row["event"] == "tools/call"]
    finally:
        log.close()
    refused_no_mfa = [row for row in calls if "second factor" in (row["detail"] or "")]
    assert len(refused_no_mfa) == 1
    assert refused_no_mfa[0]["decision"] == "deny"


def deployment_url(deployment: Deployment) -> str:
    import yaml

    url = yaml.safe_load(deployment.config.read_text()).get("database_url")
    return str(url) if url else f"sqlite:///{deployment.database}"


@pytest.mark.slow
def test_the_grant_lookup_benchmark_measures_both_lookups() -> None:
    from bench import grant_bench

    result = grant_bench.measure(calls=5, grants=2, trail=10)
    assert set(result) == {"old_us", "chain_us"}
    assert all(value > 0 for value in result.values())


def test_tables_from_before_the_chain_binding_gain_its_columns_and_their_rows_are_not_honoured(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sqlalchemy.create_engine(url)
    old = forged_grant()
    del old["chain_seq"], old["chain_digest"]
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(
            "CREATE TABLE breakglass_grant (id VARCHAR PRIMARY KEY, subject VARCHAR, catalog VARCHAR, tool VARCHAR, "
            "requested_at FLOAT, status VARCHAR, approver VARCHAR, approved_at FLOAT, reason VARCHAR, ttl INTEGER, "
            "requester_amr VARCHAR, expires_at FLOAT, revoked_by VARCHAR, revoked_at FLOAT)"
        ))  # fmt: skip
    insert(engine, "breakglass_grant", old)
    engine.dispose()
    from mcp_gateway.breakglass import BreakGlass
    from mcp_gateway.config import BreakGlassSettings

    audit = AuditLog(url)
    store = BreakGlass(url, BreakGlassSettings(), audit)
    try:
        assert store.active_grant("alice", "internal", "hr.salary_lookup") is None
        assert store.get(old["id"]).state == "unrecorded"
    finally:
        store.close()
        audit.close()
    assert [kind for kind, _ in verify_problems(url)] == ["unrecorded-grant"]
