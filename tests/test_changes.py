"""Configuration changes from the CLI are audit records (the verified operator, old and new digests, lines
added/removed), refused changes too; an unverified or under-privileged operator changes nothing; `audit trace
--change ID` tells their story; CEF export escapes hostile text."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import sqlalchemy
import yaml
from typer.testing import CliRunner

from mcp_gateway.audit.export import cef_line
from mcp_gateway.audit.log import AuditEntry, AuditLog
from mcp_gateway.cli.app import app
from mcp_gateway.config import load_settings
from mcp_gateway.devkeys import DevKey, ensure_dev_key
from tests.conftest import ISSUER, Deployment, ExampleApi, make_deployment

# The operator's token comes only from what each test passes: never from the environment running the tests.
runner = CliRunner(env={"MCP_GATEWAY_TOKEN": None, "MCP_GATEWAY_TOKEN_FILE": None})
LINE = "p, role:auditor, internal, crm.*, call, allow"


def _token(deployment: Deployment, subject: str, roles: tuple[str, ...] = ("policy-admin",), **claims: object) -> str:
    path = deployment.root / f"{subject}-{len(list(deployment.root.glob('*.token')))}.token"
    path.write_text(deployment.mint(subject, roles, "internal", amr=("pwd", "mfa"), **claims))
    return str(path)


def _rows(deployment: Deployment) -> list[dict[str, object]]:
    log = AuditLog(load_settings(deployment.config).database_url)
    rows = list(log.iter_rows())
    log.close()
    return rows


def test_cli_policy_change_is_audited_with_actor_digests_and_lines(deployment: Deployment) -> None:
    config = str(deployment.config)
    bob = _token(deployment, "bob")
    result = runner.invoke(app, ["policy", "add", LINE, "--file", "internal.csv", "--token-file", bob, "-c", config])
    assert result.exit_code == 0, result.output
    assert "by bob" in result.output
    assert LINE in (deployment.policies / "internal.csv").read_text()
    found = re.search(r"audit record (\d+)", result.output)
    assert found, result.output
    record_id = int(found.group(1))
    row = next(row for row in _rows(deployment) if row["id"] == record_id)
    detail = json.loads(str(row["detail"]))
    assert (row["event"], row["subject"], row["outcome"]) == ("policy.change", "bob", "ok")
    assert detail["actor"]["sub"] == "bob"
    assert detail["actor"]["amr"] == ["pwd", "mfa"]
    assert re.fullmatch(r"[0-9a-f]{32}", detail["actor"]["jti"])
    assert detail["added"] == [LINE]
    assert detail["removed"] == []
    assert detail["old_digest"] != detail["new_digest"]
    assert re.fullmatch(r"[0-9a-f]{32}", str(row["trace_id"]))

    story = runner.invoke(app, ["audit", "trace", "--change", str(record_id), "-c", config])
    assert story.exit_code == 0, story.output
    for expected in ("policy.change", "bob", detail["old_digest"][:16], detail["new_digest"][:16], "role:auditor"):
        assert expected in story.output

    removed = runner.invoke(
        app, ["policy", "remove", LINE, "--file", "internal.csv", "--token-file", bob, "-c", config]
    )
    assert removed.exit_code == 0, removed.output
    assert LINE not in (deployment.policies / "internal.csv").read_text()
    assert json.loads(str(_rows(deployment)[-1]["detail"]))["removed"] == [LINE]


def test_refused_cli_change_leaves_the_file_and_is_audited(deployment: Deployment) -> None:
    before = (deployment.policies / "internal.csv").read_text()
    bad = "p, role:x, internal, crm.*, call, maybe"
    eve = _token(deployment, "eve")
    result = runner.invoke(
        app, ["policy", "add", bad, "--file", "internal.csv", "--token-file", eve, "-c", str(deployment.config)]
    )
    assert result.exit_code == 2
    assert (deployment.policies / "internal.csv").read_text() == before
    last = _rows(deployment)[-1]
    assert (last["event"], last["subject"], last["outcome"]) == ("policy.change", "eve", "rejected")
    assert json.loads(str(last["detail"]))["new_digest"] is None


def test_cli_change_refuses_paths_outside_the_policies_folder(deployment: Deployment) -> None:
    token = _token(deployment, "bob")
    for name in ("../x.csv", "model.conf", "sub/internal.csv"):
        args = ["policy", "add", LINE, "--file", name, "--token-file", token, "-c", str(deployment.config)]
        result = runner.invoke(app, args)
        assert result.exit_code == 2, name
    assert not (deployment.root / "x.csv").exists()


def _forged(deployment: Deployment) -> str:
    # Signed by a key the gateway does not trust, under the trusted key's id.
    other = ensure_dev_key(deployment.root / "other-key")
    path = deployment.root / "forged.token"
    path.write_text(
        other.mint(
            "mallory",
            roles=("policy-admin",),
            catalog="internal",
            issuer=ISSUER,
            audience=deployment.audience,
            headers={"kid": deployment.key.kid},
        )
    )
    return str(path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        pytest.param("none", "no operator token", id="no-token"),
        pytest.param("missing-file", "cannot read", id="missing-token-file"),
        pytest.param("expired", "refused: expired", id="expired"),
        pytest.param("forged", "refused: bad signature", id="forged"),
        pytest.param("wrong-audience", "refused: wrong audience", id="wrong-audience"),
        pytest.param("support-role", "policy add needs a token role in admin.policy_roles", id="under-privileged"),
    ],
)
@pytest.mark.parametrize("command", ["add", "remove"])
def test_an_unverified_or_under_privileged_operator_changes_nothing(
    deployment: Deployment, case: str, message: str, command: str
) -> None:
    tokens = {
        "none": lambda: None,
        "missing-file": lambda: str(deployment.root / "absent.token"),
        "expired": lambda: _token(deployment, "bob", now=time.time() - 3600),
        "forged": lambda: _forged(deployment),
        "wrong-audience": lambda: _token(deployment, "bob", audience="https://elsewhere.example/mcp"),
        "support-role": lambda: _token(deployment, "bob", ("support", "breakglass-approver")),
    }
    token = tokens[case]()
    policy = deployment.policies / "internal.csv"
    line = LINE if command == "add" else "p, role:support, internal, crm.*, call, allow"
    before, rows_before = policy.read_bytes(), _rows(deployment)
    args = ["policy", command, line, "--file", "internal.csv", "-c", str(deployment.config)]
    result = runner.invoke(app, [*args, *(["--token-file", token] if token else [])])
    assert result.exit_code == 1, result.output
    assert message.replace("policy add", f"policy {command}") in " ".join(result.output.split())
    assert policy.read_bytes() == before
    assert _rows(deployment) == rows_before


def test_the_operator_token_may_come_from_the_environment(deployment: Deployment) -> None:
    token = Path(_token(deployment, "carol")).read_text()
    args = ["policy", "add", LINE, "--file", "internal.csv", "-c", str(deployment.config)]
    result = runner.invoke(app, args, env={"MCP_GATEWAY_TOKEN": token})
    assert result.exit_code == 0, result.output
    assert _rows(deployment)[-1]["subject"] == "carol"


def test_free_text_actors_are_gone(deployment: Deployment) -> None:
    args = ["policy", "add", LINE, "--file", "internal.csv", "--actor", "bob", "-c", str(deployment.config)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2  # no such option
    assert LINE not in (deployment.policies / "internal.csv").read_text()


def test_read_only_commands_need_no_token_and_no_identity_provider(deployment: Deployment) -> None:
    # Keys from a URL nothing answers: a command that verified a token would fail to load them.
    data = yaml.safe_load(deployment.config.read_text())
    data["identity"].pop("jwks_file")
    data["identity"]["jwks_url"] = "http://127.0.0.1:9/jwks.json"
    data["egress"]["allow"].append("http://127.0.0.1:9")
    deployment.config.write_text(yaml.safe_dump(data))
    config = str(deployment.config)
    read_only = [
        ["policy", "explain", "-s", "alice", "-r", "support", "--catalog", "internal", "--tool", "crm.customer_lookup"],
        ["policy", "matrix"],
        ["policy", "lint"],
        ["audit", "checkpoint"],  # a signed checkpoint, for verify to check
        ["audit", "verify"],
        ["audit", "export"],
    ]
    for args in read_only:
        result = runner.invoke(app, [*args, "-c", config])
        assert result.exit_code == 0, (args, result.output)
    changed = runner.invoke(app, ["policy", "add", LINE, "--file", "internal.csv", "-c", config])
    assert changed.exit_code == 1  # no token: refused before the keys are needed
    assert "no operator token" in changed.output


def test_trace_change_refuses_a_record_that_is_not_a_change(deployment: Deployment) -> None:
    log = AuditLog(load_settings(deployment.config).database_url)
    log.record(AuditEntry(event="tools/list", decision="allow", outcome="ok"))
    log.close()
    result = runner.invoke(app, ["audit", "trace", "--change", "1", "-c", str(deployment.config)])
    assert result.exit_code == 1
    unknown = runner.invoke(app, ["audit", "trace", "f" * 32, "-c", str(deployment.config)])
    assert unknown.exit_code == 1


def test_cef_escapes_pipes_equals_and_newlines_from_callers() -> None:
    row = {
        "id": 3,
        "ts": "2026-11-25T10:00:00.000000+00:00",
        "event": "tools/call|x",
        "decision": "deny",
        "outcome": "unknown_tool",
        "subject": "mallory\nCEF:0|forged|line",
        "tool": "a=b\\c",
        "hash": "ab" * 32,
    }
    line = cef_line(row)
    assert line.count("\n") == 1
    assert line.startswith("CEF:0|mcp-gateway|mcp-gateway|")
    assert "tools/call\\|x" in line
    assert "suser=mallory\\nCEF:0|forged|line" in line
    assert "cs1=a\\=b\\\\c" in line
    assert "rt=1795600800000" in line


def test_cef_and_trace_neutralise_terminal_escapes_and_unicode_line_breaks(deployment: Deployment) -> None:
    hostile = "eve\x1b[2J\u2028forged\x85line"
    row = {"id": 1, "ts": "2026-11-25T10:00:00.000000+00:00", "event": hostile, "subject": hostile, "hash": "ab" * 32}
    line = cef_line(row)
    assert len(line.splitlines()) == 1
    assert line[:-1].isprintable()  # nothing but the final newline is a control or format character
    assert "eve\\x1b[2J\\u2028forged\\x85line" in line
    log = AuditLog(load_settings(deployment.config).database_url)
    log.record(AuditEntry(event="tools/call", decision="deny", outcome="x", subject=hostile, trace_id="e" * 32))
    log.close()
    story = runner.invoke(app, ["audit", "trace", "e" * 32, "-c", str(deployment.config)])
    assert story.exit_code == 0, story.output
    assert "\x1b" not in story.output
    assert "\u2028" not in story.output
    assert "\\x1b[2J" in story.output


def test_export_cef_streams_every_row(deployment: Deployment) -> None:
    log = AuditLog(load_settings(deployment.config).database_url)
    for index in range(3):
        log.record(AuditEntry(event="tools/call", decision="deny", outcome="unknown_tool", subject=f"u{index}"))
    log.close()
    result = runner.invoke(app, ["audit", "export", "--format", "cef", "-c", str(deployment.config)])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == 3
    assert all(line.startswith("CEF:0|") for line in lines)


@pytest.fixture
def pg_deployment(tmp_path: Path, example_api: ExampleApi, dev_key: DevKey, postgres_url: str) -> Deployment:
    # A fresh trail in the session's PostgreSQL (other tests leave theirs behind).
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP TABLE IF EXISTS audit_record"))
    engine.dispose()
    return make_deployment(tmp_path, example_api, dev_key, database_url=postgres_url)


def test_on_postgresql_only_a_verified_operator_changes_policy_and_is_recorded(pg_deployment: Deployment) -> None:
    deployment, config = pg_deployment, str(pg_deployment.config)
    policy = deployment.policies / "internal.csv"
    before = policy.read_bytes()
    support = _token(deployment, "bob", ("support",))
    refused = runner.invoke(
        app, ["policy", "add", LINE, "--file", "internal.csv", "--token-file", support, "-c", config]
    )
    assert refused.exit_code == 1
    assert policy.read_bytes() == before
    assert _rows(deployment) == []
    admin = _token(deployment, "bob")
    done = runner.invoke(app, ["policy", "add", LINE, "--file", "internal.csv", "--token-file", admin, "-c", config])
    assert done.exit_code == 0, done.output
    (row,) = _rows(deployment)
    assert (row["event"], row["subject"]) == ("policy.change", "bob")
    assert json.loads(str(row["detail"]))["actor"]["amr"] == ["pwd", "mfa"]
