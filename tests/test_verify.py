"""`mcp-gateway audit verify`: every kind of tampering names the first bad record, and only an intact trail
exits 0. The trail is a real SQLite database written by the gateway's own AuditLog; tampering is done the way
an operator with write access would do it, with the sqlite3 driver (dropping constraints where needed)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mcp_gateway.audit.checkpoint import Checkpointer, Signer
from mcp_gateway.audit.log import AuditEntry, AuditLog, record_hash
from mcp_gateway.audit.mirror import mirror_path
from mcp_gateway.cli.app import app
from mcp_gateway.cli.audit import progress_bar
from mcp_gateway.config import Settings, load_settings
from tests.conftest import Deployment

runner = CliRunner()
Rows = list[dict[str, Any]]


def _entry(index: int) -> AuditEntry:
    return AuditEntry(
        event="tools/call",
        decision="allow",
        outcome="ok",
        request_id=f"r-{index}",
        trace_id=f"{index:032x}",
        subject="alice",
        roles=("support",),
        catalog="internal",
        tool="crm.customer_lookup",
        detail={"n": index},
    )


@pytest.fixture
def trail(deployment: Deployment) -> Settings:
    """15 records with signed checkpoints at records 5, 10 and 15."""
    settings = load_settings(deployment.config)
    log = AuditLog(settings.database_url)
    checkpointer = Checkpointer(log, Signer.load_or_create(settings.signing_key_path), settings.checkpoint_path)
    for index in range(1, 16):
        log.record(_entry(index))
        if index % 5 == 0:
            assert checkpointer.sign_now() is not None
    log.close()
    return settings


def _mirror(settings: Settings) -> Path:
    """The trail's own checkpoint mirror (audit/mirror.py)."""
    log = AuditLog(settings.database_url)
    log.close()
    return mirror_path(settings.checkpoint_path, log.records.identity)


def _db(settings: Settings) -> str:
    return settings.database_url.removeprefix("sqlite:///")


def _verify(settings: Settings, *extra: str) -> tuple[int, str]:
    result = runner.invoke(app, ["audit", "verify", "--config", str(_config(settings)), *extra])
    return result.exit_code, result.output


def _config(settings: Settings) -> Path:
    return settings.state_dir.parent / "mcp-gateway.yaml"


def _rewrite(settings: Settings, change: Callable[[Rows], Rows]) -> None:
    """Replace the whole table with ``change(rows)``, as an operator would: without the UNIQUE constraint."""
    with sqlite3.connect(_db(settings)) as connection:
        connection.row_factory = sqlite3.Row
        rows = [dict(row) for row in connection.execute("SELECT * FROM audit_record ORDER BY id")]
        rows = change(rows)
        connection.execute("CREATE TABLE forged AS SELECT * FROM audit_record WHERE 0")
        connection.execute("DROP TABLE audit_record")
        connection.execute("ALTER TABLE forged RENAME TO audit_record")
        columns = list(rows[0])
        connection.executemany(
            f"INSERT INTO audit_record ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",  # noqa: S608
            [tuple(row[c] for c in columns) for row in rows],
        )


def _renumber(rows: Rows) -> Rows:
    return [{**row, "id": index} for index, row in enumerate(rows, 1)]


def _rehash_from(rows: Rows, start: int) -> Rows:
    for index in range(start - 1, len(rows)):
        if index:
            rows[index]["prev_hash"] = rows[index - 1]["hash"]
        rows[index]["hash"] = record_hash(rows[index])
    return rows


def _sql(settings: Settings, statement: str) -> None:
    with sqlite3.connect(_db(settings)) as connection:
        connection.execute(statement)


def test_intact_trail_verifies_and_exits_zero(trail: Settings) -> None:
    code, output = _verify(trail)
    assert code == 0, output
    assert "OK" in output
    assert "15 records" in output
    assert "3 checkpoints match" in output


def _forged_copy(rows: Rows, index: int) -> Rows:
    forged = dict(rows[index - 1])
    forged["subject"] = "mallory"
    forged["prev_hash"] = rows[index - 1]["hash"]
    forged["hash"] = record_hash(forged)
    return _renumber([*rows[:index], forged, *rows[index:]])


TAMPERING: list[Any] = [
    # (id, how, first bad record, kind)
    pytest.param(lambda s: _sql(s, "UPDATE audit_record SET subject = 'alicf' WHERE id = 7"), 7, "changed", id="byte"),
    pytest.param(lambda s: _sql(s, "UPDATE audit_record SET latency_ms = 0.5 WHERE id = 3"), 3, "changed", id="number"),
    pytest.param(lambda s: _sql(s, "DELETE FROM audit_record WHERE id = 7"), 8, "deleted", id="deleted"),
    pytest.param(lambda s: _rewrite(s, lambda r: _forged_copy(r, 7)), 8, "inserted", id="inserted"),
    pytest.param(lambda s: _rewrite(s, lambda r: _renumber([*r[:7], r[6], *r[7:]])), 8, "duplicate", id="duplicated"),
    pytest.param(
        lambda s: _rewrite(s, lambda r: _renumber([*r[:6], r[7], r[6], *r[8:]])), 7, "broken-link", id="reordered"
    ),
    pytest.param(lambda s: _sql(s, "DELETE FROM audit_record WHERE id > 12"), 13, "truncated", id="truncated-tail"),
    pytest.param(
        lambda s: _rewrite(s, lambda r: _rehash_from([*r[:6], {**r[6], "subject": "mallory"}, *r[7:]], 7)),
        10,
        "rewritten",
        id="fully-rehashed",
    ),
]


@pytest.mark.parametrize(("tamper", "first_bad", "kind"), TAMPERING)
def test_tampering_names_the_first_bad_record(
    trail: Settings, tamper: Callable[[Settings], None], first_bad: int, kind: str
) -> None:
    tamper(trail)
    code, output = _verify(trail)
    assert code == 1, output
    assert f"FAILED: first bad record {first_bad} [{kind}]" in output


def test_fully_rehashed_chain_is_located_between_checkpoints(trail: Settings) -> None:
    _rewrite(trail, lambda r: _rehash_from([*r[:6], {**r[6], "subject": "mallory"}, *r[7:]], 7))
    _, output = _verify(trail)
    assert "rewritten in records 6..10" in output
    assert "record 15" in output  # the later checkpoint disagrees too


def test_deleting_the_checkpoints_from_the_database_does_not_hide_a_rewrite(trail: Settings) -> None:
    _rewrite(trail, lambda r: _rehash_from([*r[:6], {**r[6], "subject": "mallory"}, *r[7:]], 7))
    _sql(trail, "DELETE FROM audit_checkpoint")
    code, output = _verify(trail)
    assert code == 1
    assert "[rewritten]" in output  # the mirror file outside the database still holds them


def test_trail_without_any_checkpoint_does_not_pass(trail: Settings) -> None:
    _sql(trail, "DELETE FROM audit_checkpoint")
    _mirror(trail).unlink()
    code, output = _verify(trail)
    assert code == 1
    assert "[unsigned]" in output


def test_checkpoint_signed_by_another_key_is_refused(trail: Settings, tmp_path: Path) -> None:
    other = Signer.load_or_create(tmp_path / "other.key")
    forged = other.sign(15, "f" * 64)
    with _mirror(trail).open("a") as handle:
        handle.write(json.dumps(forged) + "\n")
    code, output = _verify(trail)
    assert code == 1
    assert "bad-checkpoint" in output


def test_checkpoint_with_a_changed_hash_is_refused(trail: Settings) -> None:
    _sql(trail, "UPDATE audit_checkpoint SET record_hash = 'ab' || substr(record_hash, 3) WHERE record_id = 10")
    code, output = _verify(trail)
    assert code == 1
    assert "bad-checkpoint" in output


# -- bundles: verified with no database ----------------------------------------------------------------------


def _export_bundle(settings: Settings, path: Path, *extra: str) -> None:
    result = runner.invoke(app, ["audit", "export", "--config", str(_config(settings)), "--bundle", str(path), *extra])
    assert result.exit_code == 0, result.output


def _verify_bundle(bundle: Path, key: Path) -> tuple[int, str]:
    # No --config: nothing but the bundle and the public key is read.
    result = runner.invoke(app, ["audit", "verify", "--bundle", str(bundle), "--public-key", str(key)])
    return result.exit_code, result.output


def test_exported_bundle_verifies_without_the_database(trail: Settings, tmp_path: Path) -> None:
    bundle = tmp_path / "evidence.jsonl"
    _export_bundle(trail, bundle)
    Path(_db(trail)).unlink()
    code, output = _verify_bundle(bundle, trail.signing_key_path.with_suffix(".pub"))
    assert code == 0, output
    assert "15 records" in output


def _edit_lines(bundle: Path, change: Callable[[list[str]], list[str]]) -> None:
    lines = bundle.read_text().splitlines(keepends=True)
    bundle.write_text("".join(change(lines)))


BUNDLE_TAMPERING: list[Any] = [
    # header + 3 checkpoints, so record n is on line n + 3 (0-based index)
    pytest.param(
        lambda lines: [*lines[:9], lines[9].replace("alice", "alicf"), *lines[10:]], "record 6 [changed]", id="byte"
    ),
    pytest.param(lambda lines: [*lines[:9], *lines[10:]], "record 7 [deleted]", id="deleted"),
    pytest.param(lambda lines: [*lines[:14], *lines[-1:]], "[truncated]", id="truncated-tail"),
    pytest.param(lambda lines: lines[:-3], "[truncated]", id="cut-file"),
]


@pytest.mark.parametrize(("tamper", "expected"), BUNDLE_TAMPERING)
def test_tampered_bundle_fails(
    trail: Settings, tmp_path: Path, tamper: Callable[[list[str]], list[str]], expected: str
) -> None:
    bundle = tmp_path / "evidence.jsonl"
    _export_bundle(trail, bundle)
    _edit_lines(bundle, tamper)
    code, output = _verify_bundle(bundle, trail.signing_key_path.with_suffix(".pub"))
    assert code == 1, output
    assert expected in output


def test_bundle_verified_with_the_wrong_key_fails(trail: Settings, tmp_path: Path) -> None:
    bundle = tmp_path / "evidence.jsonl"
    _export_bundle(trail, bundle)
    other = Signer.load_or_create(tmp_path / "other.key")
    code, output = _verify_bundle(bundle, tmp_path / "other.pub")
    assert other.key_id not in output
    assert code == 1
    assert "bad-checkpoint" in output


def test_partial_bundle_since_a_time_verifies(trail: Settings, tmp_path: Path) -> None:
    log = AuditLog(trail.database_url)
    since = log.by_id(8)
    log.close()
    assert since is not None
    bundle = tmp_path / "since.jsonl"
    _export_bundle(trail, bundle, "--since", since["ts"])
    code, output = _verify_bundle(bundle, trail.signing_key_path.with_suffix(".pub"))
    assert code == 0, output


def test_not_a_bundle_is_refused(tmp_path: Path, trail: Settings) -> None:
    fake = tmp_path / "fake.jsonl"
    fake.write_text('{"id": 1}\n')
    code, output = _verify_bundle(fake, trail.signing_key_path.with_suffix(".pub"))
    assert code == 2
    assert "not an mcp-gateway audit bundle" in output


def test_progress_bar_is_shown_on_large_trails_only() -> None:
    console = Console(record=True, force_terminal=True, width=100)
    with progress_bar(console, 50_000, "verifying") as tick:
        tick(25_000)
    with progress_bar(console, 10, "quiet") as tick:
        tick(5)
    text = console.export_text()
    assert "verifying" in text
    assert "quiet" not in text
