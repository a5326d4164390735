"""Every state-changing command refuses an operator it cannot verify or who lacks the role, and changes nothing:
no file, no grant or held-call row, no successful chain record. The same matrix on SQLite and PostgreSQL, through
the real CLI with real tokens (missing, expired, forged, for another audience, under-privileged)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from mcp_gateway.devkeys import DevKey, ensure_dev_key
from mcp_gateway.gateway import Gateway
from tests.conftest import ISSUER, Deployment, ExampleApi, GatewayFactory, configure, make_deployment
from tests.test_breakglass import ALICE, Tokens, approval_id, cli, request

APPROVER = ("breakglass-approver",)
REVIEWER = ("breakglass-reviewer",)
LINE = "p, role:auditor, internal, crm.*, call, allow"
_TABLES = ("audit_record", "audit_checkpoint", "audit_write_probe", "breakglass_grant", "held_call")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'audit.db'}"
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


@pytest.fixture
def deployment(tmp_path: Path, example_api: ExampleApi, dev_key: DevKey, database_url: str) -> Deployment:
    return make_deployment(tmp_path, example_api, dev_key, database_url=database_url)


@pytest.fixture
def tokens(deployment: Deployment, tmp_path: Path) -> Tokens:
    folder = tmp_path / "tokens"
    folder.mkdir()
    return Tokens(deployment, folder)


@dataclass(frozen=True)
class Command:
    """One state-changing command: its argv after the subject it acts on, and the role it needs."""

    action: str
    argv: Callable[[str], list[str]]
    role_setting: str


COMMANDS: dict[str, Command] = {
    "policy add": Command("policy add", lambda _: ["policy", "add", LINE, "--file", "internal.csv"],
                          "admin.policy_roles"),
    "breakglass approve": Command("breakglass approve", lambda grant: ["breakglass", "approve", grant],
                                  "breakglass.approver_roles"),
    "breakglass revoke": Command("breakglass revoke", lambda grant: ["breakglass", "revoke", grant],
                                 "only the requester or an approver may revoke"),
    "breakglass review": Command("breakglass review",
                                 lambda grant: ["breakglass", "review", grant, "--outcome", "ok", "--note", "fine"],
                                 "admin.reviewer_roles"),
    "approval approve": Command("approval approve", lambda held: ["approval", "approve", held],
                                "breakglass.approver_roles"),
    "approval deny": Command("approval deny", lambda held: ["approval", "deny", held], "breakglass.approver_roles"),
    "catalog pin": Command("catalog pin", lambda _: ["catalog", "pin", "--reason", "reviewed in CHG-1"],
                           "admin.policy_roles"),
    "models import": Command("models import",
                             lambda source: ["models", "import", source, "--name", "tiny", "--sha256", "0" * 64],
                             "admin.policy_roles"),
}  # fmt: skip


def _forged(deployment: Deployment, folder: Path) -> Path:
    # Signed by a key the gateway does not trust, under the trusted key's id, with every role there is.
    other = ensure_dev_key(folder / "other-key")
    path = folder / "forged.jwt"
    roles = ("policy-admin", *APPROVER, *REVIEWER)
    path.write_text(other.mint("mallory", roles=roles, catalog="internal", issuer=ISSUER,
                               audience=deployment.audience, headers={"kid": deployment.key.kid}))  # fmt: skip
    return path


def _token(kind: str, deployment: Deployment, tokens: Tokens) -> tuple[list[str], str]:
    """The ``--token-file`` arguments for ``kind`` and the words the refusal must contain."""
    every_role = ("policy-admin", *APPROVER, *REVIEWER)
    folder = tokens.folder

    def minted(name: str, token: str) -> list[str]:
        (folder / name).write_text(token)
        return ["--token-file", str(folder / name)]

    if kind == "none":
        return [], "no operator token"
    if kind == "missing-file":
        return ["--token-file", str(folder / "absent.jwt")], "cannot read"
    if kind == "expired":
        token = deployment.mint("mallory", every_role, "internal", amr=("pwd", "mfa"), now=time.time() - 3600)
        return minted("expired.jwt", token), "refused: expired"
    if kind == "forged":
        return ["--token-file", str(_forged(deployment, folder))], "refused: bad signature"
    if kind == "wrong-audience":
        token = deployment.mint("mallory", every_role, "internal", audience="https://elsewhere.example/mcp")
        return minted("audience.jwt", token), "refused: wrong audience"
    assert kind == "under-privileged"
    return ["--token-file", str(tokens.file("mallory", ("support",)))], ""


def _state(deployment: Deployment, database_url: str) -> dict[str, Any]:
    """Everything a command could change: the files operators edit and the state tables."""
    engine = sqlalchemy.create_engine(database_url)
    tables: dict[str, Any] = {}
    try:
        with engine.connect() as connection:
            names = set(sqlalchemy.inspect(connection).get_table_names())
            for table in ("breakglass_grant", "held_call"):
                if table in names:
                    query = sqlalchemy.text(f"SELECT * FROM {table} ORDER BY id")  # noqa: S608 - fixed names
                    tables[table] = [dict(row) for row in connection.execute(query).mappings()]
            ok = sqlalchemy.text("SELECT id, event FROM audit_record WHERE outcome = 'ok' ORDER BY id")
            tables["ok records"] = [tuple(row) for row in connection.execute(ok)]
    finally:
        engine.dispose()
    files = {path: path.read_bytes() for path in sorted(deployment.root.rglob("*")) if _watched(path, deployment)}
    return {"tables": tables, "files": files}


def _watched(path: Path, deployment: Deployment) -> bool:
    relative = path.relative_to(deployment.root).parts
    return path.is_file() and relative[0] in ("policies", "catalogs", "models")


async def _subject(name: str, deployment: Deployment, tokens: Tokens, gateway: Gateway) -> str:
    """What the command acts on: a real pending or approved grant, a real held call, a real weights file."""
    if name == "breakglass approve":
        return request(deployment, tokens.file("alice", ("support",)))
    if name in ("breakglass revoke", "breakglass review"):
        grant = request(deployment, tokens.file("alice", ("support",)))
        approved = cli(deployment, "breakglass", "approve", grant, "--token-file", tokens.file("dave", APPROVER))
        assert approved.exit_code == 0, approved.output
        return grant
    if name.startswith("approval "):
        return approval_id(await gateway.call_tool(ALICE, "tickets.create", {"customer_id": "c-1",
                                                                             "summary": "x"}, "held"))  # fmt: skip
    if name == "models import":
        source = deployment.root / "tiny.gguf"
        source.write_bytes(b"GGUF" + bytes(64))
        return str(source)
    return ""


@pytest.mark.parametrize("kind", ["none", "missing-file", "expired", "forged", "wrong-audience", "under-privileged"])
@pytest.mark.parametrize("name", list(COMMANDS))
async def test_an_unverified_or_under_privileged_operator_changes_nothing(
    name: str, kind: str, deployment: Deployment, tokens: Tokens, make_gateway: GatewayFactory, database_url: str
) -> None:
    command = COMMANDS[name]
    configure(deployment, "internal", "tickets.create", approval="required")
    gateway = make_gateway()
    subject = await _subject(name, deployment, tokens, gateway)
    token_args, refusal = _token(kind, deployment, tokens)
    before = _state(deployment, database_url)

    result = cli(deployment, *command.argv(subject), *token_args)

    output = " ".join(result.output.split())
    assert result.exit_code == 1, output
    if kind == "under-privileged":
        refusal = command.role_setting
        if command.role_setting.endswith("_roles"):
            assert f"{command.action} needs a token role in" in output
    assert refusal in output
    assert _state(deployment, database_url) == before
