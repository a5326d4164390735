"""One checkpoint mirror per trail: two trails (a SQLite and a PostgreSQL database) sharing one ``state_dir``
keep separate mirrors and both verify; the one mirror from before is adopted only when it is wholly one trail's,
and otherwise fails verification rather than being ignored; a rewrite from the first record keeps the key."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from sqlalchemy import make_url
from typer.testing import CliRunner

from mcp_gateway.audit.checkpoint import Checkpointer, Signer
from mcp_gateway.audit.log import GENESIS, AuditEntry, AuditLog, record_hash
from mcp_gateway.audit.mirror import mirror_path, read_checkpoint_file
from mcp_gateway.cli.app import app
from mcp_gateway.config import Settings, load_settings
from mcp_gateway.store.records import trail_identity
from tests.conftest import Deployment, serving_http

runner = CliRunner()


def _second_trail(deployment: Deployment, database_url: str) -> Path:
    """Another config in the same folder: same state_dir (and signing key), another database."""
    data = yaml.safe_load(deployment.config.read_text())
    data["database_url"] = database_url
    path = deployment.root / "second.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _record(config: Path, count: int, subject: str) -> None:
    log = AuditLog(load_settings(config).database_url)
    for _ in range(count):
        log.record(AuditEntry(event="tools/call", decision="allow", outcome="ok", subject=subject, tool="crm.search"))
    log.close()


def _cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _mirror(settings: Settings) -> Path:
    log = AuditLog(settings.database_url)
    log.close()
    return mirror_path(settings.checkpoint_path, log.records.identity)


async def _one_call(url: str, token: str) -> None:
    with anyio.fail_after(60):
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
            Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
        ):
            assert not (await client.call_tool("crm.search", {"query": "ada"})).is_error


def test_two_trails_in_one_state_dir_keep_their_own_mirrors_and_both_verify(
    deployment: Deployment, fresh_postgres_url: str
) -> None:
    first = deployment.config
    second = _second_trail(deployment, fresh_postgres_url)
    # The PostgreSQL trail is written by a real gateway (it signs at start-up and at shutdown).
    with serving_http(Deployment(deployment.root, second, deployment.audience, deployment.key, deployment.port)) as on:
        anyio.run(_one_call, on.url, deployment.mint("alice", ("support",), "internal"))
    _record(first, 3, "alice")
    assert _cli("audit", "checkpoint", "-c", str(first))[0] == 0
    _record(first, 2, "alice")
    assert _cli("audit", "checkpoint", "-c", str(first))[0] == 0

    one, two = load_settings(first), load_settings(second)
    assert one.state_dir == two.state_dir
    assert _mirror(one) != _mirror(two)
    assert _mirror(one).parent == _mirror(two).parent == one.checkpoint_path.parent
    assert not one.checkpoint_path.exists()  # nobody writes the unkeyed name any more
    for settings in (one, two):
        lines = list(read_checkpoint_file(_mirror(settings)))
        assert lines
        assert {line["trail"] for line in lines} == {trail_identity(make_url(settings.database_url))}
    for config in (first, second):
        code, output = _cli("audit", "verify", "-c", str(config))
        assert code == 0, output
        assert "OK" in output
        assert "rewritten" not in output
    assert "postgresql://127.0.0.1:" in _cli("audit", "verify", "-c", str(second))[1]


def _signed_trail(config: Path, count: int, subject: str) -> Settings:
    settings = load_settings(config)
    _record(config, count, subject)
    log = AuditLog(settings.database_url)
    Checkpointer(log, Signer.load_or_create(settings.signing_key_path), settings.checkpoint_path).sign_now()
    log.close()
    return settings


def _as_legacy(*mirrors: Path) -> None:
    """Put these mirrors' checkpoints into the one unkeyed file, as gateways before per-trail mirrors wrote."""
    base = mirrors[0].with_name("audit-checkpoints.jsonl")
    lines = [
        json.dumps({key: value for key, value in item.items() if key != "trail"})
        for mirror in mirrors
        for item in read_checkpoint_file(mirror)
    ]
    base.write_text("".join(line + "\n" for line in lines))
    for mirror in mirrors:
        mirror.unlink()


def test_the_old_single_mirror_of_one_trail_is_adopted_by_it(deployment: Deployment) -> None:
    settings = _signed_trail(deployment.config, 4, "alice")
    _as_legacy(_mirror(settings))
    code, output = _cli("audit", "verify", "-c", str(deployment.config))
    assert code == 0, output  # read as it is, before anyone adopts it
    _record(deployment.config, 1, "alice")
    assert _cli("audit", "checkpoint", "-c", str(deployment.config))[0] == 0
    assert not settings.checkpoint_path.exists()
    assert len(list(read_checkpoint_file(_mirror(settings)))) == 2  # the adopted checkpoint and the new one
    code, output = _cli("audit", "verify", "-c", str(deployment.config))
    assert code == 0, output


def test_an_old_mirror_shared_by_two_trails_fails_verify_until_moved_aside(deployment: Deployment) -> None:
    second = _second_trail(deployment, "sqlite:///state/second.db")
    one, two = _signed_trail(deployment.config, 4, "alice"), _signed_trail(second, 6, "bob")
    _as_legacy(_mirror(one), _mirror(two))
    for config in (deployment.config, second):
        _record(config, 1, "carol")
        assert _cli("audit", "checkpoint", "-c", str(config))[0] == 0
        assert one.checkpoint_path.exists()  # neither trail adopts a file that is not wholly its own
        code, output = _cli("audit", "verify", "-c", str(config))
        assert code == 1, output
        assert "legacy-mirror" in output
        assert "1 checkpoints in" in output
        assert "[rewritten]" not in output  # the other trail's checkpoints are not taken for this one's
        assert "  rewritten:" not in output
    one.checkpoint_path.rename(one.checkpoint_path.with_suffix(".checked"))
    for config in (deployment.config, second):
        code, output = _cli("audit", "verify", "-c", str(config))
        assert code == 0, output


def test_a_trail_rewritten_from_its_first_record_keeps_its_mirror_and_is_caught(deployment: Deployment) -> None:
    settings = _signed_trail(deployment.config, 3, "alice")
    database = settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as connection:
        connection.row_factory = sqlite3.Row
        rows: list[dict[str, Any]] = [dict(row) for row in connection.execute("SELECT * FROM audit_record ORDER BY id")]
        previous = GENESIS
        for row in rows:
            row.update(subject="mallory", prev_hash=previous)
            row["hash"] = previous = record_hash(row)
            connection.execute(
                "UPDATE audit_record SET subject = ?, prev_hash = ?, hash = ? WHERE id = ?",
                (row["subject"], row["prev_hash"], row["hash"], row["id"]),
            )
        connection.execute("DELETE FROM audit_checkpoint")
    code, output = _cli("audit", "verify", "-c", str(deployment.config))
    assert code == 1
    assert "[rewritten]" in output


def test_a_mirror_line_of_another_trail_fails_verify(deployment: Deployment) -> None:
    settings = _signed_trail(deployment.config, 2, "alice")
    mirror = _mirror(settings)
    (line,) = read_checkpoint_file(mirror)
    with mirror.open("a") as handle:
        handle.write(json.dumps({**line, "trail": "sqlite:/elsewhere/audit.db"}) + "\n")
    code, output = _cli("audit", "verify", "-c", str(deployment.config))
    assert code == 1
    assert "foreign-mirror" in output


@pytest.mark.parametrize(
    ("left", "right", "same"),
    [
        ("postgresql+psycopg://u:secret@DB.example:5432/audit", "postgresql://other@db.example/audit", True),
        ("postgresql://db.example/audit", "postgresql://db.example/other", False),
        ("postgresql://db.example:5433/audit", "postgresql://db.example/audit", False),
        ("sqlite:////tmp/x/../audit.db", "sqlite:////tmp/audit.db", True),
        ("sqlite:////tmp/a.db", "sqlite:////tmp/b.db", False),
    ],
)
def test_a_trail_identity_names_the_database_not_its_spelling_and_no_secret(left: str, right: str, same: bool) -> None:
    one, two = trail_identity(make_url(left)), trail_identity(make_url(right))
    assert (one == two) is same
    assert "secret" not in one
    assert "u:" not in one
