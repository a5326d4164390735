"""Configuration changes from the CLI are audit records (actor, old and new digests, lines added/removed),
refused changes too; `audit trace --change ID` tells their story; CEF export escapes hostile text."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from mcp_gateway.audit.export import cef_line
from mcp_gateway.audit.log import AuditEntry, AuditLog
from mcp_gateway.cli.app import app
from mcp_gateway.config import load_settings
from tests.conftest import Deployment

runner = CliRunner()
LINE = "p, role:auditor, internal, crm.*, call, allow"


def _rows(deployment: Deployment) -> list[dict[str, object]]:
    log = AuditLog(load_settings(deployment.config).database_url)
    rows = list(log.iter_rows())
    log.close()
    return rows


def test_cli_policy_change_is_audited_with_actor_digests_and_lines(deployment: Deployment) -> None:
    config = str(deployment.config)
    result = runner.invoke(app, ["policy", "add", LINE, "--file", "internal.csv", "--actor", "bob", "-c", config])
    assert result.exit_code == 0, result.output
    assert LINE in (deployment.policies / "internal.csv").read_text()
    found = re.search(r"audit record (\d+)", result.output)
    assert found, result.output
    record_id = int(found.group(1))
    row = next(row for row in _rows(deployment) if row["id"] == record_id)
    detail = json.loads(str(row["detail"]))
    assert (row["event"], row["subject"], row["outcome"]) == ("policy.change", "bob", "ok")
    assert detail["added"] == [LINE]
    assert detail["removed"] == []
    assert detail["old_digest"] != detail["new_digest"]
    assert re.fullmatch(r"[0-9a-f]{32}", str(row["trace_id"]))

    story = runner.invoke(app, ["audit", "trace", "--change", str(record_id), "-c", config])
    assert story.exit_code == 0, story.output
    for expected in ("policy.change", "bob", detail["old_digest"][:16], detail["new_digest"][:16], "role:auditor"):
        assert expected in story.output

    removed = runner.invoke(app, ["policy", "remove", LINE, "--file", "internal.csv", "--actor", "bob", "-c", config])
    assert removed.exit_code == 0, removed.output
    assert LINE not in (deployment.policies / "internal.csv").read_text()
    assert json.loads(str(_rows(deployment)[-1]["detail"]))["removed"] == [LINE]


def test_refused_cli_change_leaves_the_file_and_is_audited(deployment: Deployment) -> None:
    before = (deployment.policies / "internal.csv").read_text()
    bad = "p, role:x, internal, crm.*, call, maybe"
    result = runner.invoke(
        app, ["policy", "add", bad, "--file", "internal.csv", "--actor", "eve", "-c", str(deployment.config)]
    )
    assert result.exit_code == 2
    assert (deployment.policies / "internal.csv").read_text() == before
    last = _rows(deployment)[-1]
    assert (last["event"], last["subject"], last["outcome"]) == ("policy.change", "eve", "rejected")
    assert json.loads(str(last["detail"]))["new_digest"] is None


def test_cli_change_refuses_paths_outside_the_policies_folder(deployment: Deployment) -> None:
    for name in ("../x.csv", "model.conf", "sub/internal.csv"):
        result = runner.invoke(app, ["policy", "add", LINE, "--file", name, "-c", str(deployment.config)])
        assert result.exit_code == 2, name
    assert not (deployment.root / "x.csv").exists()


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
