"""A reload that picks up a hand edit records what changed in the files (digests, the diff of lines) and, in a git
work tree, the HEAD commit and author and what is not committed; the config file is digested at start and a
changed one is recorded, secrets redacted."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
import yaml

from mcp_gateway.config import load_settings
from mcp_gateway.configfile import startup_detail
from mcp_gateway.devkeys import DevKey
from mcp_gateway.gateway import Gateway
from mcp_gateway.provenance import MAX_DIFF_LINES, REDACTED, redact_yaml_lines
from mcp_gateway.server import build_gateway
from tests.conftest import API_KEY, Deployment, ExampleApi, GatewayFactory, make_deployment

GRANT = "p, user:alice, internal, hr.salary_lookup, call, allow"
AUTHOR = "Sec Team <secteam@example.test>"


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway()


def rows(gateway: Gateway, event: str | None = None) -> list[dict[str, Any]]:
    found = [row for row in gateway.audit.iter_rows() if event is None or row["event"] == event]
    for row in found:
        row["detail"] = json.loads(row["detail"]) if row["detail"] else None
    return found


def git(folder: Path, *args: str, author: str = AUTHOR) -> str:
    name, email = author.removesuffix(">").split(" <")
    env = {**os.environ, "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email}
    env |= {"GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.test", "GIT_CONFIG_GLOBAL": os.devnull}
    done = subprocess.run(["git", "-C", str(folder), *args], env=env, capture_output=True, check=True, timeout=30)
    return done.stdout.decode().strip()


def _append(path: Path, line: str) -> None:
    with path.open("a") as handle:
        handle.write(line + "\n")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_hand_edit_of_a_csv_is_recorded_with_its_diff_and_digests(
    gateway: Gateway, deployment: Deployment
) -> None:
    policy = deployment.policies / "internal.csv"
    before = _sha(policy)
    _append(policy, GRANT)
    assert gateway.reload().policy_changed
    record = rows(gateway, "policy.reload")[-1]
    detail = record["detail"]
    (change,) = detail["files"]
    assert (change["file"], change["status"]) == ("internal.csv", "modified")
    assert (change["old_sha256"], change["new_sha256"]) == (before, _sha(policy))
    assert "+" + GRANT in change["diff"]
    assert change["diff"][:2] == ["--- a/internal.csv", "+++ b/internal.csv"]
    assert detail["added"] == [GRANT]
    assert detail["git"] == {"work_tree": False}  # pytest's tmp folder is in no work tree

    # The next edit is diffed against the version now in force, not the one at start.
    _append(policy, "# reviewed")
    gateway.reload()
    (second,) = rows(gateway, "policy.reload")[-1]["detail"]["files"]
    assert second["old_sha256"] == change["new_sha256"]
    assert [line for line in second["diff"] if line.startswith("+") and not line.startswith("+++")] == ["+# reviewed"]


async def test_in_a_git_work_tree_the_record_names_the_commit_its_author_and_what_is_uncommitted(
    gateway: Gateway, deployment: Deployment
) -> None:
    root = deployment.root
    git(root, "init", "-q")
    git(root, "add", "policies", "catalogs")
    git(root, "commit", "-q", "-m", "baseline", author="Someone Else <else@example.test>")
    policy = deployment.policies / "internal.csv"
    _append(policy, GRANT)
    git(root, "commit", "-q", "-am", "grant alice the salary lookup")
    head = git(root, "rev-parse", "HEAD")

    gateway.reload()
    committed = rows(gateway, "policy.reload")[-1]["detail"]["git"]
    assert committed["work_tree"] is True
    assert (committed["commit"], committed["author"], committed["uncommitted"]) == (head, AUTHOR, [])
    assert committed["committer"] == "ci <ci@example.test>"

    # A hand edit not (yet) committed: HEAD's author is not its author, and the record says so.
    _append(policy, "p, user:bob, internal, hr.*, call, allow")
    gateway.reload()
    uncommitted = rows(gateway, "policy.reload")[-1]["detail"]["git"]
    assert (uncommitted["commit"], uncommitted["uncommitted"]) == (head, ["internal.csv"])


async def test_a_fresh_repository_without_commits_marks_every_change_uncommitted(
    gateway: Gateway, deployment: Deployment
) -> None:
    git(deployment.root, "init", "-q")
    _append(deployment.policies / "internal.csv", GRANT)
    gateway.reload()
    state = rows(gateway, "policy.reload")[-1]["detail"]["git"]
    assert (state["work_tree"], state["commit"], state["uncommitted"]) == (True, None, ["internal.csv"])


async def test_without_git_the_record_says_so(
    gateway: Gateway, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(deployment.root / "no-such-bin"))
    _append(deployment.policies / "internal.csv", GRANT)
    assert gateway.reload().policy_changed
    assert rows(gateway, "policy.reload")[-1]["detail"]["git"] == {"available": False, "error": "git not found on PATH"}


async def test_git_runs_no_program_the_repository_configures(gateway: Gateway, deployment: Deployment) -> None:
    # A policy editor who can write .git/config must not get to run commands as the gateway.
    root = deployment.root
    marker = root / "ran"
    git(root, "init", "-q")
    hook = f"sh -c 'touch {marker}'"
    for key, value in (("core.fsmonitor", hook), ("filter.evil.clean", hook), ("diff.evil.textconv", hook)):
        git(root, "config", key, value)
    (root / ".gitattributes").write_text("*.csv filter=evil diff=evil\n")
    git(root, "add", "policies")
    git(root, "commit", "-q", "-m", "baseline")
    marker.unlink(missing_ok=True)  # git add ran the filter itself; only the gateway's own git calls count
    _append(deployment.policies / "internal.csv", GRANT)
    gateway.reload()
    assert rows(gateway, "policy.reload")[-1]["detail"]["git"]["uncommitted"] == ["internal.csv"]
    assert not marker.exists()


async def test_a_catalog_edit_is_recorded_with_its_diff_and_the_tools_it_changed(
    gateway: Gateway, deployment: Deployment
) -> None:
    catalog = deployment.root / "catalogs" / "internal.yaml"
    catalog.write_text(catalog.read_text() + "# reviewed by secteam\n")
    gateway.reload()
    record = rows(gateway, "catalog.reload")[-1]
    (change,) = record["detail"]["files"]
    assert change["file"] == "internal.yaml"
    assert "+# reviewed by secteam" in change["diff"]
    assert record["detail"]["catalogs"]["internal"] == {"added": [], "removed": [], "changed": []}

    catalog.write_text(catalog.read_text().replace("name: crm.search", "name: crm.find"))
    assert gateway.reload().catalogs_changed
    detail = rows(gateway, "catalog.reload")[-1]["detail"]
    assert detail["catalogs"]["internal"]["added"] == ["crm.find"]
    removed = [line for line in detail["files"][0]["diff"] if line.startswith("-") and "crm.search" in line]
    added = [line for line in detail["files"][0]["diff"] if line.startswith("+") and "crm.find" in line]
    assert removed
    assert added


async def test_a_huge_edit_is_recorded_bounded(gateway: Gateway, deployment: Deployment) -> None:
    policy = deployment.policies / "internal.csv"
    _append(policy, "\n".join(f"p, user:u{index}, internal, crm.search, call, allow" for index in range(2000)))
    assert gateway.reload().policy_changed
    detail = rows(gateway, "policy.reload")[-1]["detail"]
    assert len(detail["files"][0]["diff"]) == MAX_DIFF_LINES
    assert detail["omitted_lines"] > 0
    assert detail["files"][0]["new_sha256"] == _sha(policy)  # the digest covers all of it


def _config(deployment: Deployment) -> dict[str, Any]:
    return dict(yaml.safe_load(deployment.config.read_text()))


async def test_the_start_record_digests_the_config_and_records_the_effective_settings(
    gateway: Gateway, deployment: Deployment
) -> None:
    start = rows(gateway, "gateway.start")[-1]["detail"]
    assert start["config_file"] == str(deployment.config.resolve())
    assert start["config_sha256"] == _sha(deployment.config)
    assert start["settings"]["egress"]["allow"] == _config(deployment)["egress"]["allow"]
    assert start["settings"]["identity"]["audience"] == deployment.audience


async def test_a_config_file_change_is_recorded_once_with_its_diff_secrets_redacted(
    gateway: Gateway, deployment: Deployment
) -> None:
    original = deployment.config.read_bytes()
    data = _config(deployment)
    data["egress"]["allow"].append("https://collector.example.test")
    data["telemetry"] = {"otlp_endpoint": "https://collector.example.test"}
    data["database_url"] = "postgresql+psycopg://gateway:hunter2-s3cret@127.0.0.1:5432/audit"
    deployment.config.write_text(yaml.safe_dump(data))
    report = gateway.reload()
    assert report.config_changed
    assert not report.policy_changed
    record = rows(gateway, "config.change")[-1]
    assert (record["subject"], record["outcome"]) == ("gateway", "pending_restart")
    detail = record["detail"]
    assert (detail["old_sha256"], detail["new_sha256"]) == (
        hashlib.sha256(original).hexdigest(),
        _sha(deployment.config),
    )
    assert detail["security_keys"] == ["egress.allow", "telemetry.otlp_endpoint"]
    assert "database_url" in detail["changed_keys"]
    assert detail["loads"] is True
    diff = detail["files"][0]["diff"]
    assert "+- https://collector.example.test" in [line.replace("  ", "") for line in diff]
    assert f"+database_url: postgresql+psycopg://gateway:{REDACTED}@127.0.0.1:5432/audit" in diff
    raw = next(row for row in gateway.audit.iter_rows() if row["id"] == record["id"])
    assert "hunter2" not in str(raw)  # nowhere in the record

    assert not gateway.reload().config_changed  # recorded once
    deployment.config.write_bytes(original)
    assert gateway.reload().config_changed
    assert rows(gateway, "config.change")[-1]["outcome"] == "in_force"


async def test_a_broken_config_is_recorded_as_not_loading_without_quoting_secrets(
    gateway: Gateway, deployment: Deployment
) -> None:
    deployment.config.write_text(deployment.config.read_text() + "client_secret: sw0rdfish: [\n")
    gateway.reload()
    detail = rows(gateway, "config.change")[-1]["detail"]
    assert detail["loads"] is False
    assert "not valid YAML" in detail["error"]
    assert "sw0rdfish" not in json.dumps(detail)


async def test_an_unreadable_config_is_recorded_once(gateway: Gateway, deployment: Deployment) -> None:
    deployment.config.unlink()
    assert gateway.reload().config_changed
    assert not gateway.reload().config_changed
    record = rows(gateway, "config.change")[-1]
    assert (record["outcome"], record["detail"]["error"]) == ("rejected", "unreadable: No such file or directory")


def test_settings_built_in_code_have_no_file_to_digest(deployment: Deployment) -> None:
    from mcp_gateway.config import Settings

    settings = Settings(**load_settings(deployment.config).model_dump())
    assert startup_detail(settings)["config_file"] is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # credential-looking keys
        pytest.param("password: hunter2", f"password: {REDACTED}", id="password"),
        pytest.param("  client_secret: 'abc'", f"  client_secret: {REDACTED}", id="nested-secret"),
        pytest.param("api_key: k-123", f"api_key: {REDACTED}", id="api-key"),
        pytest.param("- token: t", f"- token: {REDACTED}", id="list-item"),
        pytest.param('"bearer_token": x', f'"bearer_token": {REDACTED}', id="quoted-key"),
        pytest.param("signing-key: /k.pem", f"signing-key: {REDACTED}", id="dashed"),
        # not credentials
        pytest.param("max_token_bytes: 8192", "max_token_bytes: 8192", id="token-in-the-middle"),
        pytest.param("credential_env: API_KEY", "credential_env: API_KEY", id="env-name"),
        pytest.param("issuer: https://idp", "issuer: https://idp", id="plain"),
        # passwords in URLs, under any key
        pytest.param("url: https://u:p4ss@h/x", f"url: https://u:{REDACTED}@h/x", id="userinfo"),
        pytest.param("url: https://u@h/x", "url: https://u@h/x", id="user-only"),
    ],
)
def test_redaction_of_config_lines(line: str, expected: str) -> None:
    assert redact_yaml_lines([line]) == [expected]


def test_a_secret_block_is_redacted_to_its_end() -> None:
    lines = ["private_key: |", "  -----BEGIN-----", "  c2VjcmV0", "", "next: 1", "credentials:", "  user: u", "x: 2"]
    assert redact_yaml_lines(lines) == [
        f"private_key: {REDACTED}",
        f"  {REDACTED}",
        f"  {REDACTED}",
        "",
        "next: 1",
        f"credentials: {REDACTED}",
        f"  {REDACTED}",
        "x: 2",
    ]


async def test_on_postgresql_a_hand_edit_and_a_config_change_are_recorded(
    tmp_path: Path, example_api: ExampleApi, dev_key: DevKey, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP TABLE IF EXISTS audit_record"))
    engine.dispose()
    monkeypatch.setenv("INVENTORY_API_KEY", API_KEY)
    deployment = make_deployment(tmp_path, example_api, dev_key, database_url=postgres_url)
    gateway = build_gateway(load_settings(deployment.config))
    try:
        _append(deployment.policies / "internal.csv", GRANT)
        data = _config(deployment)
        data["egress"]["allow"].append("https://elsewhere.example.test")
        deployment.config.write_text(yaml.safe_dump(data))
        report = gateway.reload()
        assert (report.policy_changed, report.config_changed) == (True, True)
        assert "+" + GRANT in rows(gateway, "policy.reload")[-1]["detail"]["files"][0]["diff"]
        assert rows(gateway, "config.change")[-1]["detail"]["security_keys"] == ["egress.allow"]
    finally:
        await gateway.aclose()
        gateway.audit.close()
