"""``mcp-gateway doctor``: a sound deployment passes; each broken guarantee is its own fail row and exit 1.

Configs are real files in ``tmp_path`` with copies of the shipped catalogs and policies; the guard's probes run
for real (listeners on 127.0.0.1). Only DNS is replaced, where a name must resolve to a metadata address.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner, Result

from mcp_gateway.audit.checkpoint import Signer
from mcp_gateway.cli.app import app
from mcp_gateway.config import EgressSettings, load_settings
from mcp_gateway.devkeys import ensure_dev_key
from mcp_gateway.doctor import Status, probes, run_checks

REPO = Path(__file__).resolve().parents[1]
API = "http://127.0.0.1:8081"
COLLECTOR = "http://localhost:4318"  # a name: resolved (to 127.0.0.1 here) and every address checked
ENV = {"COLUMNS": "1000"}


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "catalogs", tmp_path / "catalogs")
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    ensure_dev_key(tmp_path / "state")
    (tmp_path / "keys").mkdir(mode=0o700)
    Signer.load_or_create(tmp_path / "keys" / "audit-signing.key")
    database = tmp_path / "state" / "audit.db"
    database.touch(mode=0o600)
    return tmp_path


def good_config() -> dict[str, Any]:
    return {
        "identity": {
            "issuer": "https://idp.example.test",
            "audience": "http://127.0.0.1:8080/mcp",
            "jwks_file": "state/dev-jwks.json",
            "max_token_lifetime": 900,
        },
        "egress": {"allow": [API, COLLECTOR]},
        "telemetry": {"otlp_endpoint": COLLECTOR},
        "audit": {"signing_key": "keys/audit-signing.key", "durability": "power"},
        "catalogs_dir": "catalogs",
        "policies_dir": "policies",
        "state_dir": "state",
    }


def write(folder: Path, data: dict[str, Any]) -> Path:
    path = folder / "mcp-gateway.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def doctor(config: Path, *extra: str) -> Result:
    return CliRunner().invoke(app, ["doctor", "--config", str(config), *extra], env=ENV, catch_exceptions=False)


def findings(result: Result) -> list[dict[str, str]]:
    document = json.loads(result.stdout)
    assert document["ok"] is (document["counts"]["fail"] == 0)
    rows: list[dict[str, str]] = document["findings"]
    return rows


def failed(result: Result) -> list[dict[str, str]]:
    return [row for row in findings(result) if row["status"] == "fail"]


# -- a sound deployment ------------------------------------------------------------------------------------------


def test_a_sound_deployment_passes_with_json_for_ci(deployment: Path) -> None:
    result = doctor(write(deployment, good_config()), "--format", "json")
    assert result.exit_code == 0, result.stdout
    rows = findings(result)
    assert not [row for row in rows if row["status"] == "fail"]
    checks = {row["check"] for row in rows}
    assert {"endpoint", "egress guard", "proxy variables", "signing key", "database", "key placement"} <= checks
    assert {"token lifetime", "tls", "durability"} <= checks
    collector = next(row for row in rows if row["subject"].startswith("telemetry.otlp_endpoint"))
    assert collector["status"] == "pass"
    assert "resolves to 127.0.0.1" in collector["reason"]
    # The guard's refusals are shown for each of the gateway's clients, with the listener's word for it.
    refusals = [row for row in rows if row["check"] == "egress guard" and "no connection" in row["reason"]]
    assert len(refusals) == 4
    assert all(row["status"] == "pass" for row in rows if row["check"] == "proxy variables")


def test_the_table_names_every_check_and_the_verdict(deployment: Path) -> None:
    result = doctor(write(deployment, good_config()))
    assert result.exit_code == 0
    for word in ("egress guard", "proxy variables", "key placement", "durability", "OK:"):
        assert word in result.stdout


# -- each broken guarantee: its own fail row, exit 1 -------------------------------------------------------------


def _off_allowlist(deployment: Path, data: dict[str, Any]) -> None:
    path = deployment / "catalogs" / "internal.yaml"
    catalog = yaml.safe_load(path.read_text(encoding="utf-8"))
    catalog["tools"][0]["backend"]["url"] = "http://127.0.0.1:9/customers/{customer_id}"
    path.write_text(yaml.safe_dump(catalog), encoding="utf-8")


def _numeric_metadata_name(deployment: Path, data: dict[str, Any]) -> None:
    # 2852039166 is how the system resolver also spells 169.254.169.254.
    data["egress"]["allow"].append("http://2852039166:80")
    data["telemetry"]["otlp_endpoint"] = "http://2852039166:80"


def _world_readable_key(deployment: Path, data: dict[str, Any]) -> None:
    (deployment / "keys" / "audit-signing.key").chmod(0o644)


def _group_writable_database(deployment: Path, data: dict[str, Any]) -> None:
    (deployment / "state" / "audit.db").chmod(0o620)


def _key_beside_database(deployment: Path, data: dict[str, Any]) -> None:
    Signer.load_or_create(deployment / "state" / "signing.key")
    data["audit"]["signing_key"] = "state/signing.key"


def _public_bind_without_tls(deployment: Path, data: dict[str, Any]) -> None:
    data["http"] = {"host": "0.0.0.0", "port": 8080}  # noqa: S104 (the condition under test)


def _no_lifetime_cap(deployment: Path, data: dict[str, Any]) -> None:
    del data["identity"]["max_token_lifetime"]


@pytest.mark.parametrize(
    ("breakage", "check", "reason"),
    [
        pytest.param(_off_allowlist, "endpoint", "is not on egress.allow", id="endpoint-off-allowlist"),
        pytest.param(_numeric_metadata_name, "endpoint", "169.254.169.254", id="name-is-metadata-address"),
        pytest.param(_world_readable_key, "signing key", "others can read", id="world-readable-key"),
        pytest.param(_group_writable_database, "database", "group", id="group-writable-database"),
        pytest.param(_key_beside_database, "key placement", "database's directory", id="key-beside-database"),
        pytest.param(_public_bind_without_tls, "tls", "non-loopback", id="public-bind-without-tls"),
        pytest.param(_no_lifetime_cap, "token lifetime", "not configured", id="no-lifetime-cap"),
    ],
)
def test_each_broken_guarantee_fails_with_its_own_row(deployment: Path, breakage: Any, check: str, reason: str) -> None:
    data = good_config()
    breakage(deployment, data)
    result = doctor(write(deployment, data), "--format", "json")
    assert result.exit_code == 1
    rows = failed(result)
    assert any(row["check"] == check and reason in row["reason"] for row in rows), rows


def test_the_table_exits_1_too(deployment: Path) -> None:
    data = good_config()
    _public_bind_without_tls(deployment, data)
    result = doctor(write(deployment, data))
    assert result.exit_code == 1
    assert "FAIL" in result.stdout
    assert "non-loopback" in result.stdout


@pytest.mark.parametrize(
    "addresses",
    [
        pytest.param(["169.254.169.254"], id="metadata"),
        pytest.param(["10.0.0.5", "169.254.169.254"], id="one-of-several"),
        pytest.param(["0.0.0.0"], id="unspecified"),  # noqa: S104
        pytest.param(["::ffff:169.254.169.254"], id="mapped-metadata"),
        pytest.param([], id="no-address"),
    ],
)
def test_a_name_resolving_to_a_refused_address_fails(deployment: Path, addresses: list[str]) -> None:
    data = good_config()
    data["egress"]["allow"].append("https://collector.example.internal:4318")
    data["telemetry"]["otlp_endpoint"] = "https://collector.example.internal:4318"
    settings = load_settings(write(deployment, data))

    def resolver(host: str, port: int) -> list[str]:
        return addresses if host == "collector.example.internal" else ["127.0.0.1"]

    rows = [finding for finding in run_checks(settings, resolver=resolver) if finding.status is Status.FAIL]
    assert [row.subject.split(":")[0] for row in rows] == ["telemetry.otlp_endpoint"]


def test_a_missing_key_and_database_are_warned_not_passed(deployment: Path) -> None:
    (deployment / "keys" / "audit-signing.key").unlink()
    (deployment / "state" / "audit.db").unlink()
    result = doctor(write(deployment, good_config()), "--format", "json")
    rows = {row["check"]: row for row in findings(result) if row["check"] in ("signing key", "database")}
    assert {row["status"] for row in rows.values()} == {"warn"}


# -- the probes can fail: a client that honours proxies or skips the guard is caught ----------------------------


def _unguarded_get(egress: EgressSettings, url: str, resolver: Any = None) -> bytes:
    with httpx.Client(trust_env=True, timeout=5) as client:
        return client.get(url).raise_for_status().content


def test_an_unguarded_client_is_caught_by_the_probes(deployment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes, "_CLIENTS", (("unguarded httpx", _unguarded_get),))
    before = {name: os.environ.get(name) for name in probes.PROXY_VARIABLES}
    rows = probes.probe_checks(load_settings(write(deployment, good_config())))
    verdicts = {(row.check, row.status) for row in rows if row.subject.startswith("unguarded")}
    assert ("egress guard", Status.FAIL) in verdicts
    assert ("proxy variables", Status.FAIL) in verdicts
    proxy = next(row for row in rows if row.check == "proxy variables")
    assert "proxy saw" in proxy.reason
    # The probe's proxy variables are gone again.
    assert {name: os.environ.get(name) for name in probes.PROXY_VARIABLES} == before


# -- hostile configuration values: a row or exit 2, never a traceback ------------------------------------------


HOSTILE_URLS = [
    pytest.param("http://[::1", id="broken-ipv6"),
    pytest.param("http://127.0.0.1:99999/x", id="port-out-of-range"),
    pytest.param("http://user:secret@127.0.0.1:8081/x", id="credentials"),
    pytest.param("ftp://127.0.0.1:8081/x", id="not-http"),
    pytest.param("http://[bold red]x[/]:80/", id="markup"),
    pytest.param("http://a\nb:80/", id="newline"),
    pytest.param("http://" + "a" * 100_000 + ":80/", id="huge-host"),
    pytest.param(12345, id="not-a-string"),
    pytest.param(None, id="null"),
]


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_hostile_endpoint_values_do_not_crash_it(deployment: Path, url: object) -> None:
    path = deployment / "catalogs" / "internal.yaml"
    catalog = yaml.safe_load(path.read_text(encoding="utf-8"))
    catalog["tools"][0]["backend"]["url"] = url
    catalog.setdefault("servers", []).append({"name": "up", "url": url})
    path.write_text(yaml.safe_dump(catalog), encoding="utf-8")
    (deployment / "catalogs" / "models.yaml").write_text(
        yaml.safe_dump({"models": [{"name": "m", "base_url": url}, "not-a-mapping", None]}), encoding="utf-8"
    )
    config = write(deployment, good_config())
    assert doctor(config).exit_code == 1
    result = doctor(config, "--format", "json")
    assert result.exit_code == 1
    assert any(row["check"] == "catalogs" for row in failed(result))


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("[unclosed", id="not-yaml"),
        pytest.param("- a list\n- at the top\n", id="a-list"),
        pytest.param("tools: 5\nservers: {a: b}\n", id="wrong-shapes"),
        pytest.param("\x00\x01binary", id="binary"),
    ],
)
def test_hostile_catalog_files_are_a_fail_row(deployment: Path, content: str) -> None:
    (deployment / "catalogs" / "extra.yaml").write_text(content, encoding="utf-8")
    result = doctor(write(deployment, good_config()), "--format", "json")
    assert result.exit_code == 1
    assert failed(result)


def test_a_hostile_allowlist_name_is_a_fail_row(deployment: Path) -> None:
    # A 64-octet label: the resolver itself refuses it (UnicodeError), which must be a row, not a traceback.
    name = "a" * 64 + ".example"
    data = good_config()
    data["egress"]["allow"].append(f"http://{name}:4318")
    data["telemetry"]["otlp_endpoint"] = f"http://{name}:4318"
    result = doctor(write(deployment, data), "--format", "json")
    assert result.exit_code == 1
    assert any(row["subject"].startswith("telemetry.otlp_endpoint") for row in failed(result))


@pytest.mark.parametrize(
    "content",
    [pytest.param("- not\n- a mapping\n", id="list"), pytest.param("identity: 5\n", id="bad-identity")],
)
def test_a_config_that_does_not_load_exits_2(deployment: Path, content: str) -> None:
    path = deployment / "mcp-gateway.yaml"
    path.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(app, ["doctor", "--config", str(path)], env=ENV, catch_exceptions=False)
    assert result.exit_code == 2
