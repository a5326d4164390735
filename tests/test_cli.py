"""The ``mcp-gateway`` command, in-process through ``CliRunner``, against configs written to ``tmp_path``."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from mcp_gateway.audit.log import GENESIS, AuditEntry, AuditLog, record_hash
from mcp_gateway.cli.app import app
from mcp_gateway.config import load_settings
from mcp_gateway.devkeys import ensure_dev_key
from mcp_gateway.errors import ConfigError, GatewayError
from mcp_gateway.identity import JwtVerifier, load_jwks

REPO = Path(__file__).resolve().parents[1]
API = "http://127.0.0.1:8081"
ISSUER = "https://idp.example.test"
AUDIENCE = "http://127.0.0.1:8080/mcp"
# Wide enough that Rich never wraps a key or a path across lines.
ENV = {"COLUMNS": "1000"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def base_config() -> dict[str, Any]:
    return {
        "identity": {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwks_file": "state/dev-jwks.json",
            "algorithms": ["EdDSA", "RS256"],
            "leeway": 30,
        },
        "egress": {"allow": [API]},
        "catalogs_dir": "catalogs",
        "policies_dir": "policies",
        "state_dir": "state",
    }


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """A folder holding copies of the shipped catalogs and policies and a development key."""
    shutil.copytree(REPO / "catalogs", tmp_path / "catalogs")
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    ensure_dev_key(tmp_path / "state")
    return tmp_path


def write_config(folder: Path, data: dict[str, Any], name: str = "mcp-gateway.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def config(deployment: Path) -> Path:
    return write_config(deployment, base_config())


def run(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args], env={**ENV, **(env or {})}, catch_exceptions=False)


def text(stream: str) -> str:
    """Output with colour codes removed and every run of whitespace made one space."""
    return " ".join(_ANSI.sub("", stream).split())


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


# --- config check ---------------------------------------------------------------------------------------------


def test_config_check_accepts_the_good_config(config: Path) -> None:
    result = run("config", "check", "--config", config)

    assert result.exit_code == 0, result.output
    out = text(result.stdout)
    assert "catalog internal: 4 tools" in out
    assert "catalog partner: 3 tools" in out
    assert "configuration OK" in out


def test_config_check_accepts_the_shipped_example_config_shape(deployment: Path) -> None:
    # The repository's own mcp-gateway.yaml, pointed at this deployment's key.
    data = yaml.safe_load((REPO / "mcp-gateway.yaml").read_text(encoding="utf-8"))
    data["identity"]["jwks_file"] = "state/dev-jwks.json"
    data["state_dir"] = "state"

    result = run("config", "check", "--config", write_config(deployment, data))

    assert result.exit_code == 0, result.output


def test_config_check_warns_about_allowlisted_addresses_no_connection_should_reach(config: Path) -> None:
    data = base_config()
    flagged = ["http://169.254.169.254", "http://[fd00:ec2::254]:80", "http://0.0.0.0:8080", "http://2852039166"]
    data["egress"]["allow"] = [API, *flagged, "https://metadata.google.internal"]
    write_config(config.parent, data)

    result = run("config", "check", "--config", config)

    assert result.exit_code == 0, result.output  # a warning: the operator may mean it
    assert "configuration OK" in result.stdout
    warnings = text(result.stderr).split("warning: ")[1:]
    assert len(warnings) == len(flagged) + 1, result.stderr
    assert all(line.startswith("egress.allow ") for line in warnings)
    assert "cloud metadata" in warnings[0]
    assert "unspecified" in text(result.stderr)
    assert "169.254.169.254" in warnings[3]  # the decimal spelling, named for what it is
    assert "127.0.0.1" not in text(result.stderr)


def _without_issuer(data: dict[str, Any]) -> None:
    del data["identity"]["issuer"]


def _set(section: str, key: str, value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        data[section][key] = value

    return change


def _jwks_url(url: str, *, keep_file: bool) -> Any:
    def change(data: dict[str, Any]) -> None:
        data["identity"]["jwks_url"] = url
        if not keep_file:
            del data["identity"]["jwks_file"]

    return change


def _without_key_source(data: dict[str, Any]) -> None:
    del data["identity"]["jwks_file"]


def _unknown_key(data: dict[str, Any]) -> None:
    data["listen_port"] = 8080


@pytest.mark.parametrize(
    ("change", "keys"),
    [
        # identity
        pytest.param(_without_issuer, ["identity.issuer"], id="missing-issuer"),
        pytest.param(_set("identity", "algorithms", ["RS256", "HS256"]), ["identity.algorithms"], id="hs256"),
        pytest.param(_set("identity", "algorithms", ["none"]), ["identity.algorithms"], id="alg-none"),
        pytest.param(_set("identity", "algorithms", []), ["identity.algorithms"], id="no-algorithms"),
        pytest.param(_set("identity", "leeway", 120), ["identity.leeway"], id="leeway-120"),
        pytest.param(
            _jwks_url(f"{API}/jwks.json", keep_file=True),
            ["identity.jwks_file", "identity.jwks_url"],
            id="both-key-sources",
        ),
        pytest.param(_without_key_source, ["identity.jwks_file", "identity.jwks_url"], id="no-key-source"),
        pytest.param(
            _jwks_url("https://idp.example.test/jwks.json", keep_file=False),
            ["identity.jwks_url", "egress.allow"],
            id="jwks-url-off-allowlist",
        ),
        # other sections
        pytest.param(_set("egress", "allow", ["http://127.0.0.1:8081/path"]), ["egress.allow"], id="egress-not-origin"),
        pytest.param(_unknown_key, ["listen_port"], id="unknown-top-level-key"),
    ],
)
def test_config_check_refuses_a_bad_setting_naming_the_key(config: Path, change: Any, keys: list[str]) -> None:
    data = base_config()
    change(data)
    write_config(config.parent, data)

    result = run("config", "check", "--config", config)

    assert result.exit_code == 2
    err = text(result.stderr)
    assert str(config) in err
    for key in keys:
        assert key in err
    assert "configuration OK" not in result.stdout


def test_config_check_refuses_malformed_yaml_naming_the_file(deployment: Path) -> None:
    path = deployment / "broken.yaml"
    path.write_text("identity:\n  issuer: [unclosed\n", encoding="utf-8")

    result = run("config", "check", "--config", path)

    assert result.exit_code == 2
    assert str(path) in text(result.stderr)


@pytest.mark.parametrize(
    "content",
    [pytest.param("- a\n- b\n", id="list"), pytest.param("just text\n", id="scalar")],
)
def test_config_check_refuses_a_non_mapping_file_naming_the_file(deployment: Path, content: str) -> None:
    path = deployment / "odd.yaml"
    path.write_text(content, encoding="utf-8")

    result = run("config", "check", "--config", path)

    assert result.exit_code == 2
    assert str(path) in text(result.stderr)


def test_config_check_refuses_a_missing_file_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    result = run("config", "check", "--config", path)

    assert result.exit_code == 2
    assert str(path) in text(result.stderr)


def test_config_check_refuses_a_catalog_url_off_the_allowlist(config: Path) -> None:
    data = base_config()
    data["egress"]["allow"] = ["http://127.0.0.1:9999"]
    write_config(config.parent, data)

    result = run("config", "check", "--config", config)

    assert result.exit_code == 2
    err = text(result.stderr)
    assert str(config.parent / "catalogs" / "internal.yaml") in err
    assert "tools.0.backend.url" in err


def test_config_check_refuses_a_broken_policy_line_naming_file_and_line(config: Path) -> None:
    policy = config.parent / "policies" / "internal.csv"
    lines = policy.read_text(encoding="utf-8").count("\n")
    with policy.open("a", encoding="utf-8") as file:
        file.write("p, role:support, internal, crm.*\n")

    result = run("config", "check", "--config", config)

    assert result.exit_code == 2
    assert f"internal.csv:{lines + 1}" in text(result.stderr)


def test_config_check_refuses_a_missing_jwks_file(config: Path) -> None:
    (config.parent / "state" / "dev-jwks.json").unlink()

    result = run("config", "check", "--config", config)

    assert result.exit_code == 2
    assert "identity.jwks_file" in text(result.stderr)


def test_config_check_names_a_path_containing_brackets_literally(tmp_path: Path) -> None:
    path = tmp_path / "conf[/x]" / "absent.yaml"

    result = run("config", "check", "--config", path)

    assert result.exit_code == 2
    assert str(path) in text(result.stderr)


def test_installed_command_checks_config_and_mints_a_token_as_a_subprocess(config: Path) -> None:
    command = Path(sys.executable).parent / "mcp-gateway"
    env = {"PATH": str(command.parent), "HOME": str(config.parent)}

    check = subprocess.run(
        [command, "config", "check", "--config", config], capture_output=True, text=True, env=env, timeout=30
    )
    token = subprocess.run(
        [command, "token", "issue", "-s", "alice", "--catalog", "internal", "-r", "support", "-c", config],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    bad = subprocess.run(
        [command, "config", "check", "--config", config.parent / "absent.yaml"],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip

    assert check.returncode == 0, check.stderr
    assert "configuration OK" in check.stdout
    assert token.returncode == 0, token.stderr
    assert claims(token.stdout.strip())["sub"] == "alice"
    assert bad.returncode == 2
    assert "absent.yaml" in bad.stderr


# --- Environment ----------------------------------------------------------------------------------------------


def test_environment_overrides_a_file_value(config: Path) -> None:
    override = "https://override.example.test"

    result = run(
        "token", "issue", "-s", "alice", "--catalog", "internal", "--config", config,
        env={"MCP_GATEWAY_IDENTITY__ISSUER": override},
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert claims(result.stdout.strip())["iss"] == override
    # The rest of the file's identity section is still in force.
    assert claims(result.stdout.strip())["aud"] == AUDIENCE


def test_environment_override_is_validated_and_named(config: Path) -> None:
    result = run("config", "check", "--config", config, env={"MCP_GATEWAY_IDENTITY__LEEWAY": "120"})

    assert result.exit_code == 2
    assert "identity.leeway" in text(result.stderr)


def test_mcp_gateway_config_env_picks_the_config(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no mcp-gateway.yaml here

    without = run("config", "check")
    chosen = run("config", "check", env={"MCP_GATEWAY_CONFIG": str(config)})

    assert without.exit_code == 2
    assert "mcp-gateway.yaml" in text(without.stderr)
    assert chosen.exit_code == 0, chosen.output
    assert "configuration OK" in text(chosen.stdout)


def test_config_option_wins_over_mcp_gateway_config_env(config: Path, tmp_path: Path) -> None:
    result = run("config", "check", "--config", config, env={"MCP_GATEWAY_CONFIG": str(tmp_path / "absent.yaml")})

    assert result.exit_code == 0, result.output


# --- Errors and exit statuses ---------------------------------------------------------------------------------


def _error_classes(cls: type[GatewayError] = GatewayError) -> list[type[GatewayError]]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _error_classes(child))]


@pytest.mark.parametrize("error", [pytest.param(cls, id=cls.__name__) for cls in _error_classes()])
def test_a_configuration_error_exits_2_and_every_other_gateway_error_exits_1(error: type[GatewayError]) -> None:
    assert error.exit_code == (2 if issubclass(error, ConfigError) else 1)


def test_an_unusable_audit_database_ends_a_command_with_1_and_names_it(config: Path) -> None:
    (config.parent / "junk.db").write_bytes(b"not a database " * 16)
    write_config(config.parent, {**base_config(), "database_url": "sqlite:///junk.db"})

    result = run("audit", "tail", "--config", config)

    assert result.exit_code == 1
    assert text(result.stderr).startswith("error: audit database unavailable")
    assert result.stdout == ""


# --- token issue ----------------------------------------------------------------------------------------------


def test_token_issue_prints_only_a_token_the_verifier_accepts(config: Path) -> None:
    before = int(time.time())

    result = run(
        "token", "issue", "--subject", "alice", "--catalog", "internal",
        "--role", "support", "--role", "hr", "--ttl", "120", "--amr", "mfa", "--config", config,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1  # the token alone, so $(mcp-gateway token issue ...) works
    assert "development token" in text(result.stderr)
    settings = load_settings(config)
    principal = JwtVerifier(settings.identity, load_jwks(settings.identity)).verify(result.stdout.strip())
    assert principal.subject == "alice"
    assert principal.roles == ("support", "hr")
    assert principal.catalog == "internal"
    assert principal.amr == ("mfa",)
    assert principal.issuer == ISSUER
    assert before + 120 <= principal.expires_at <= int(time.time()) + 120


@pytest.mark.parametrize("ttl", [pytest.param("3601", id="over-the-cap"), pytest.param("0", id="zero")])
def test_token_issue_refuses_a_ttl_the_gateway_would_refuse(config: Path, ttl: str) -> None:
    # identity.max_token_lifetime is 3600 by default: a longer token would be minted, then refused on every call.
    result = run("token", "issue", "-s", "alice", "--catalog", "internal", "--ttl", ttl, "--config", config)
    assert result.exit_code == 2
    assert "--ttl" in text(result.stderr)
    assert result.stdout == ""


def test_token_issue_mints_up_to_the_configured_cap(config: Path) -> None:
    result = run("token", "issue", "-s", "alice", "--catalog", "internal", "--ttl", "3600", "--config", config)
    assert result.exit_code == 0, result.output
    settings = load_settings(config)
    assert JwtVerifier(settings.identity, load_jwks(settings.identity)).verify(result.stdout.strip()).subject == "alice"


def test_token_issue_uses_the_key_the_config_publishes(config: Path) -> None:
    first = run("token", "issue", "-s", "bob", "--catalog", "partner", "-r", "partner", "--config", config)
    second = run("token", "issue", "-s", "bob", "--catalog", "partner", "-r", "partner", "--config", config)

    settings = load_settings(config)
    verifier = JwtVerifier(settings.identity, load_jwks(settings.identity))
    assert verifier.verify(first.stdout.strip()).catalog == "partner"
    assert verifier.verify(second.stdout.strip()).roles == ("partner",)


# --- policy explain and matrix --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "catalog", "tool", "exit_code", "verdict"),
    [
        pytest.param(["support"], "internal", "crm.customer_lookup", 0, "ALLOW", id="support-lookup"),
        pytest.param(["support_lead"], "internal", "crm.search", 0, "ALLOW", id="inherited-role"),
        pytest.param(["support"], "internal", "hr.salary_lookup", 1, "DENY", id="default-deny"),
        pytest.param(["partner"], "partner", "orders.cancel", 1, "DENY", id="explicit-deny"),
        pytest.param(["support"], "partner", "crm.customer_lookup", 1, "DENY", id="other-catalog"),
        pytest.param([], "internal", "crm.search", 1, "DENY", id="no-roles"),
    ],
)
def test_policy_explain_exit_status_is_the_decision(
    config: Path, roles: list[str], catalog: str, tool: str, exit_code: int, verdict: str
) -> None:
    role_args = [arg for role in roles for arg in ("--role", role)]

    result = run("policy", "explain", "-s", "alice", *role_args, "--catalog", catalog, "--tool", tool, "-c", config)

    assert result.exit_code == exit_code, result.output
    assert verdict in text(result.stdout)


def test_policy_explain_names_the_deciding_rule(config: Path) -> None:
    result = run("policy", "explain", "-s", "p1", "-r", "partner", "--catalog", "partner", "--tool", "orders.cancel",
                 "-c", config)  # fmt: skip

    assert result.exit_code == 1
    assert "partner.csv:4" in text(result.stdout)


def _matrix(result: Result) -> list[list[str]]:
    return list(csv.reader(io.StringIO(result.stdout)))


def test_policy_matrix_csv_lists_every_subject_against_every_tool(config: Path) -> None:
    result = run("policy", "matrix", "--format", "csv", "--config", config)

    assert result.exit_code == 0, result.output
    header, *rows = _matrix(result)
    assert header == ["catalog", "subject", "tool", "decision"]
    assert ["internal", "role:support", "crm.search", "allow"] in rows
    assert ["internal", "role:support", "hr.salary_lookup", "deny"] in rows
    assert ["internal", "role:support_lead", "tickets.create", "allow"] in rows
    assert ["partner", "role:partner", "orders.cancel", "deny"] in rows
    assert ["partner", "role:partner", "orders.status", "allow"] in rows
    assert len(rows) == len({tuple(row[:3]) for row in rows})


def test_policy_matrix_catalog_option_keeps_only_that_catalog(config: Path) -> None:
    result = run("policy", "matrix", "--format", "csv", "--catalog", "partner", "--config", config)

    assert result.exit_code == 0, result.output
    _, *rows = _matrix(result)
    assert rows
    assert {row[0] for row in rows} == {"partner"}


def test_policy_matrix_refuses_a_broken_policy(config: Path) -> None:
    (config.parent / "policies" / "partner.csv").write_text("q, role:partner, partner\n", encoding="utf-8")

    result = run("policy", "matrix", "--format", "csv", "--config", config)

    assert result.exit_code == 2
    assert "partner.csv:1" in text(result.stderr)


# --- audit tail and export ------------------------------------------------------------------------------------

TOOLS = ("crm.one", "crm.two", "crm.three", "crm.four")


@pytest.fixture
def trail(config: Path) -> Path:
    """Four audit rows in the config's trail."""
    log = AuditLog(load_settings(config).database_url)
    try:
        for number, tool in enumerate(TOOLS):
            log.record(
                AuditEntry(
                    event="tool.call",
                    decision="allow" if number % 2 == 0 else "deny",
                    outcome="ok",
                    request_id=f"req-{number}",
                    subject="alice",
                    roles=("support",),
                    catalog="internal",
                    tool=tool,
                    latency_ms=1.25 + number,
                    detail={"n": number, "note": "ünïcode"},
                )
            )
    finally:
        log.close()
    return config


def _exported(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_audit_tail_shows_the_most_recent_rows(trail: Path) -> None:
    result = run("audit", "tail", "-n", "2", "--config", trail)

    assert result.exit_code == 0, result.output
    out = text(result.stdout)
    assert "crm.three" in out
    assert "crm.four" in out
    assert "crm.one" not in out
    assert "crm.two" not in out


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # a caller chooses the tool name it asks for, and unknown names are audited as asked
        pytest.param(
            "tool",
            "crm.[/x]",
            id="closing-tag-in-tool",
        ),
        pytest.param(
            "subject",
            "mallory[conceal]",
            id="style-tag-in-subject",
        ),
    ],
)
def test_audit_tail_shows_caller_supplied_text_literally(config: Path, field: str, value: str) -> None:
    log = AuditLog(load_settings(config).database_url)
    try:
        entry = AuditEntry(event="tools/call", decision="deny", outcome="unknown_tool")
        log.record(
            dataclasses.replace(entry, tool=value) if field == "tool" else dataclasses.replace(entry, subject=value)
        )
    finally:
        log.close()

    result = run("audit", "tail", "--config", config)

    assert result.exit_code == 0
    assert value in text(result.stdout)


def test_audit_export_writes_a_hash_chain_as_json_lines(trail: Path) -> None:
    rows = _exported(run("audit", "export", "--format", "jsonl", "--config", trail))

    assert [row["tool"] for row in rows] == list(TOOLS)
    assert rows[0]["prev_hash"] == GENESIS
    for previous, row in itertools.pairwise(rows):
        assert row["prev_hash"] == previous["hash"]
    for row in rows:
        assert row["hash"] == record_hash(row)
    assert json.loads(rows[1]["detail"]) == {"n": 1, "note": "ünïcode"}


def test_audit_export_since_keeps_rows_at_or_after_the_time(trail: Path) -> None:
    everything = _exported(run("audit", "export", "--config", trail))
    since = everything[2]["ts"]

    rows = _exported(run("audit", "export", "--since", since, "--config", trail))

    assert rows == [row for row in everything if row["ts"] >= since]
    assert [row["tool"] for row in rows][:1] == ["crm.three"]
    assert everything[0] not in rows


def test_audit_export_since_accepts_the_same_instant_in_another_offset(trail: Path) -> None:
    everything = _exported(run("audit", "export", "--config", trail))
    since = datetime.fromisoformat(everything[2]["ts"]).astimezone(timezone(timedelta(hours=-5))).isoformat()

    rows = _exported(run("audit", "export", "--since", since, "--config", trail))

    assert [row["tool"] for row in rows] == ["crm.three", "crm.four"]


def test_audit_export_of_an_empty_trail_is_empty(config: Path) -> None:
    assert _exported(run("audit", "export", "--config", config)) == []


@pytest.mark.parametrize(
    "variable",
    [
        pytest.param("MCP_GATEWAY_IDENTITY_ISSUER", id="single-underscore"),
        pytest.param("MCP_GATEWAY_IDENTITY__ISUER", id="misspelt-key"),
        pytest.param("MCP_GATEWAY_IDENTITY", id="whole-section"),
    ],
)
def test_a_misspelt_environment_override_is_refused_not_ignored(config: Path, variable: str) -> None:
    result = run("config", "check", "--config", config, env={variable: "https://evil.example"})
    assert result.exit_code == 2
    assert variable in text(result.stderr)


def test_token_issue_refuses_an_unknown_catalog(config: Path) -> None:
    result = run("token", "issue", "--config", config, "-s", "alice", "--catalog", "nonsense")
    assert result.exit_code == 2
    assert "--catalog" in text(result.stderr)


def test_audit_export_refuses_a_since_that_is_not_a_time(trail: Path) -> None:
    result = run("audit", "export", "--config", trail, "--since", "yesterday")
    assert result.exit_code == 2
    assert "--since" in text(result.stderr)


@pytest.mark.parametrize(
    ("audience", "normal"),
    [
        pytest.param("https://gw.example.com", "https://gw.example.com/", id="bare-origin"),
        pytest.param("HTTPS://GW.example.com:443/mcp", "https://gw.example.com/mcp", id="case-and-default-port"),
        pytest.param("api://mcp-gateway", None, id="not-http"),
    ],
)
def test_audience_must_be_a_normalised_resource_uri(config: Path, audience: str, normal: str | None) -> None:
    result = run("config", "check", "--config", config, env={"MCP_GATEWAY_IDENTITY__AUDIENCE": audience})
    assert result.exit_code == 2
    assert "identity.audience" in text(result.stderr)
    if normal is not None:
        assert normal in text(result.stderr)


def test_jwks_url_must_use_tls_off_loopback(config: Path) -> None:
    data = yaml.safe_load(config.read_text())
    data["identity"].pop("jwks_file")
    data["identity"]["jwks_url"] = "http://idp.example.internal/jwks.json"
    data["egress"]["allow"].append("http://idp.example.internal")
    config.write_text(yaml.safe_dump(data))
    result = run("config", "check", "--config", config)
    assert result.exit_code == 2
    assert "identity.jwks_url" in text(result.stderr)


def test_egress_entries_with_credentials_are_refused(config: Path) -> None:
    data = yaml.safe_load(config.read_text())
    data["egress"]["allow"].append("http://user:secret@127.0.0.1:9")
    config.write_text(yaml.safe_dump(data))
    result = run("config", "check", "--config", config)
    assert result.exit_code == 2
    assert "egress.allow" in text(result.stderr)
    assert "secret" not in result.stderr


def test_audit_tail_and_export_neutralise_control_characters(config: Path) -> None:
    log = AuditLog(load_settings(config).database_url)
    log.record(AuditEntry(event="tools/call", decision="deny", outcome="x", subject="eve\x1b[2J\u2028forged"))
    log.close()
    tail = run("audit", "tail", "--config", config)
    assert "\x1b[2J" not in tail.stdout
    assert "\\x1b" in tail.stdout
    exported = run("audit", "export", "--config", config).stdout
    assert exported.isascii()
    assert len(exported.splitlines()) == 1


# --- policy lint, diff and test -------------------------------------------------------------------------------


def test_policy_lint_passes_the_shipped_policy(config: Path) -> None:
    result = run("policy", "lint", "--config", config)
    assert result.exit_code == 0, result.output
    assert "0 errors, 0 warnings" in text(result.output)


@pytest.mark.parametrize(
    ("line", "severity", "message"),
    [
        ("p, role:support, internal, crm.nothing, call, allow", "error", "no tool 'crm.nothing'"),
        ("p, role:support, internal, billing.*, call, allow", "error", "no pattern matching any tool"),
        ("p, role:support, intranet, crm.search, call, allow", "error", "catalog 'intranet' does not exist"),
        ("p, role:support, internal, crm.search, call, allow", "warning", "redundant: internal.csv:3"),
        ("p, role:support, internal, crm.*, call, deny", "warning", "shadowed by deny"),
        ("p, role:partner, partner, orders.*, call, allow", "warning", "covers write tools ['orders.cancel']"),
        ("p, role:partner, partner, *, call, allow", "warning", "covers"),
        ('p, "role:x", internal, crm.search, call, allow', "error", "quotes"),
        ("p, role:a,b, internal, crm.search, call, allow", "error", "7 fields where 6 belong"),
        ("p, role:a b, internal, crm.search, call, allow", "error", "space"),
    ],
)
def test_policy_lint_finds(deployment: Path, config: Path, line: str, severity: str, message: str) -> None:
    target = "partner.csv" if ", partner," in line else "internal.csv"
    with (deployment / "policies" / target).open("a") as handle:
        handle.write(line + "\n")
    result = run("policy", "lint", "--config", config)
    output = text(result.output)
    assert f"{severity} " in output
    assert message in output, output
    assert result.exit_code == (1 if severity == "error" else 0)
    assert run("policy", "lint", "--strict", "--config", config).exit_code == 1


def test_policy_diff_names_who_gains_and_loses_which_tool(deployment: Path, config: Path) -> None:
    proposed = deployment / "proposed"
    shutil.copytree(deployment / "policies", proposed)
    with (proposed / "internal.csv").open("a") as handle:
        handle.write("p, role:support, internal, hr.salary_lookup, call, allow\n")
    partner = proposed / "partner.csv"
    partner.write_text(partner.read_text().replace("p, role:partner, partner, products.list, call, allow\n", ""))
    same = run("policy", "diff", deployment / "policies", deployment / "policies", "--config", config)
    assert same.exit_code == 0
    result = run("policy", "diff", deployment / "policies", proposed, "--format", "csv", "--config", config)
    assert result.exit_code == 1
    assert list(csv.reader(io.StringIO(result.output))) == [
        ["change", "subject", "catalog", "tool"],
        ["gains", "role:support", "internal", "hr.salary_lookup"],
        ["gains", "role:support_lead", "internal", "hr.salary_lookup"],
        ["loses", "role:partner", "partner", "products.list"],
    ]


def test_policy_test_checks_a_table_of_expected_decisions(deployment: Path, config: Path) -> None:
    cases = deployment / "expected.csv"
    cases.write_text(
        "# security team's expectations\n"
        "subject,roles,catalog,tool,expect\n"
        "alice,support,internal,crm.search,allow\n"
        "alice,support,internal,hr.salary_lookup,deny\n"
        "hana,hr|support,internal,hr.salary_lookup,allow\n"
        "acme,partner,partner,orders.cancel,deny\n"
    )
    passed = run("policy", "test", cases, "--config", config)
    assert passed.exit_code == 0, passed.output
    assert "4 passed, 0 failed" in text(passed.output)
    cases.write_text(cases.read_text() + "acme,partner,partner,orders.cancel,allow\n")
    failed = run("policy", "test", cases, "--config", config)
    assert failed.exit_code == 1
    assert "expected allow, got deny by partner.csv:4" in text(failed.output)
    cases.write_text("subject,roles,catalog,tool,expect\nalice,support,internal,crm.search,maybe\n")
    assert run("policy", "test", cases, "--config", config).exit_code == 2
