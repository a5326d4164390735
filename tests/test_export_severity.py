"""CEF and JSON export give each record the severity of its class (audit/severity.py), carry the rule ids as
fields of their own, and flag a record the export finds tampered with; docs/audit.md prints the same table."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from typer.testing import CliRunner

from mcp_gateway.audit.export import cef_line, jsonl_line
from mcp_gateway.audit.log import AuditEntry, AuditLog
from mcp_gateway.audit.severity import SEVERITIES, classify, severity_table
from mcp_gateway.cli.app import app
from mcp_gateway.config import load_settings
from tests.conftest import Deployment, configure, serving_http

ROOT = Path(__file__).resolve().parents[1]
CARD = "4111 1111 1111 1111"
runner = CliRunner()
SEVERITY = {item.name: item.severity for item in SEVERITIES}


def test_the_documented_table_is_the_table_in_code() -> None:
    assert severity_table() in (ROOT / "docs" / "audit.md").read_text(encoding="utf-8")


def test_the_classes_rank_as_the_issue_orders_them() -> None:
    assert SEVERITY["tamper"] == SEVERITY["breakglass"] == max(SEVERITY.values())
    assert SEVERITY["breakglass"] > SEVERITY["dlp_block"] == SEVERITY["change"]
    assert SEVERITY["change"] > SEVERITY["denial"] == SEVERITY["rate_limit"]
    assert SEVERITY["rate_limit"] > SEVERITY["failure"] > SEVERITY["allowed"] == min(SEVERITY.values())
    assert SEVERITY["other"] > SEVERITY["allowed"]  # a record nobody classified is never the quietest


async def _calls(url: str, token: str) -> None:
    with anyio.fail_after(60):
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
            Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
        ):
            assert not (await client.call_tool("crm.customer_lookup", {"customer_id": "c-100"})).is_error
            assert (await client.call_tool("crm.customer_lookup", {"customer_id": "c-404"})).is_error  # upstream 404
            with pytest.raises(MCPError):
                await client.call_tool("hr.salary_lookup", {"employee_id": "e-7"})
            assert not (await client.call_tool("crm.search", {"query": "ada"})).is_error
            assert (await client.call_tool("crm.search", {"query": "ada"})).is_error  # rate limited
            blocked = await client.call_tool("tickets.create", {"customer_id": "c-100", "summary": f"card {CARD}"})
            assert blocked.is_error


def _wait_for_reload(deployment: Deployment) -> None:
    log = AuditLog(load_settings(deployment.config).database_url)
    try:
        with anyio.from_thread.start_blocking_portal() as portal:
            portal.call(_poll, log)
    finally:
        log.close()


async def _poll(log: AuditLog) -> None:
    with anyio.fail_after(30):
        while not any(row["event"] == "policy.reload" for row in log.iter_rows()):
            await anyio.sleep(0.1)


def _exported(deployment: Deployment, fmt: str) -> list[str]:
    result = runner.invoke(app, ["audit", "export", "--format", fmt, "-c", str(deployment.config)])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def _cef_fields(line: str) -> tuple[int, dict[str, str]]:
    """The header severity and the extension of a CEF line, escapes honoured (``\\|`` in the header, ``\\=``)."""
    parts, current, index = [], "", 0
    while len(parts) < 7:
        char = line[index]
        if char == "\\":
            current += line[index : index + 2]
            index += 2
            continue
        if char == "|":
            parts.append(current)
            current = ""
        else:
            current += char
        index += 1
    pairs = re.findall(r"(\w+)=((?:[^=\\]|\\.)*?)(?= \w+=|\n?$)", line[index:])
    return int(parts[6]), dict(pairs)


def test_every_severity_class_from_a_real_gateway_in_cef_and_json(deployment: Deployment) -> None:
    configure(deployment, "internal", "crm.search", rate_limit="1/hour")
    configure(deployment, "internal", "tickets.create", dlp="block")
    token = deployment.mint("alice", ("support",), "internal")
    with serving_http(deployment) as served:
        anyio.run(_calls, served.url, token)
        # A hand edit of a policy file: the running gateway reloads it and records the change.
        with (deployment.policies / "internal.csv").open("a") as handle:
            handle.write("p, role:auditor, internal, crm.*, call, allow\n")
        _wait_for_reload(deployment)
    # Break-glass use: a call the gateway let through under grant g-7 (the row the core writes for one).
    log = AuditLog(load_settings(deployment.config).database_url)
    log.record(
        AuditEntry(
            event="tools/call.result", decision="allow", outcome="ok", subject="alice", tool="hr.salary_lookup",
            rule="breakglass:g-7", detail={"breakglass": "g-7", "policy_rule": "default-deny"},
        )
    )  # fmt: skip
    log.close()

    rows = [json.loads(line) for line in _exported(deployment, "jsonl")]
    cef = [_cef_fields(line) for line in _exported(deployment, "cef")]
    assert len(rows) == len(cef)
    seen: dict[str, list[dict[str, Any]]] = {}
    for row, (severity, extension) in zip(rows, cef, strict=True):
        assert row["severity_class"] == classify(row).name
        assert row["severity"] == severity == SEVERITY[row["severity_class"]]
        assert extension["cat"] == row["severity_class"]
        seen.setdefault(row["severity_class"], []).append(row)
    assert set(seen) == {"allowed", "failure", "denial", "rate_limit", "dlp_block", "change", "breakglass"}
    assert {row["outcome"] for row in seen["failure"]} == {"upstream_failed"}
    assert {row["outcome"] for row in seen["denial"]} == {"unknown_tool"}
    assert [row["event"] for row in seen["change"]] == ["policy.reload"]
    # Rule ids as fields of their own: the policy rule, the grant, the DLP rule ids.
    allowed = next(row for row in seen["allowed"] if row["tool"] == "crm.customer_lookup")
    assert allowed["policy_rule"].startswith("internal.csv:")
    (grant,) = seen["breakglass"]
    assert (grant["grant_id"], grant["policy_rule"]) == ("g-7", "default-deny")
    (dlp,) = seen["dlp_block"]
    assert dlp["dlp_rules"]
    dlp_cef = cef[rows.index(dlp)][1]
    assert dlp_cef["flexString2Label"] == "dlpRules"
    assert dlp_cef["flexString2"] == ",".join(dlp["dlp_rules"])
    grant_cef = cef[rows.index(grant)][1]
    assert (grant_cef["flexString1Label"], grant_cef["flexString1"]) == ("policyRule", "default-deny")
    assert grant_cef["reason"] == "breakglass:g-7"


def test_a_record_changed_in_the_database_is_exported_as_tamper(deployment: Deployment) -> None:
    log = AuditLog(load_settings(deployment.config).database_url)
    for subject in ("alice", "bob", "carol"):
        log.record(AuditEntry(event="tools/call", decision="allow", outcome="ok", subject=subject, tool="crm.search"))
    log.close()
    with sqlite3.connect(deployment.database) as connection:
        connection.execute("UPDATE audit_record SET subject = 'mallory' WHERE subject = 'bob'")
    rows = [json.loads(line) for line in _exported(deployment, "jsonl")]
    assert [(row["subject"], row["severity_class"]) for row in rows] == [
        ("alice", "allowed"),
        ("mallory", "tamper"),
        ("carol", "allowed"),
    ]
    assert rows[1]["severity"] == SEVERITY["tamper"]
    assert "hash" in rows[1]["tamper"]
    severity, extension = _cef_fields(_exported(deployment, "cef")[1])
    assert (severity, extension["cat"]) == (10, "tamper")
    assert extension["msg"].startswith("tamper: ")


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        pytest.param(
            {"event": "breakglass.approve", "decision": "deny", "outcome": "refused"}, "breakglass", id="bg-step"
        ),
        pytest.param(
            {"event": "tools/call", "decision": "allow", "outcome": "dlp_blocked", "rule": "breakglass:g"},
            "breakglass",
            id="bg-beats-dlp",
        ),
        pytest.param(
            {"event": "tools/call.result", "decision": "allow", "outcome": "dlp_blocked"}, "dlp_block", id="dlp-result"
        ),
        pytest.param(
            {"event": "config.reload", "decision": "error", "outcome": "rejected"}, "change", id="config-refused"
        ),
        pytest.param({"event": "approval.approve", "decision": "allow", "outcome": "ok"}, "change", id="approval"),
        pytest.param({"event": "tools/call", "decision": "allow", "outcome": "approval_required"}, "denial", id="held"),
        pytest.param({"event": "tools/list", "decision": "deny", "outcome": "unauthenticated"}, "denial", id="unauth"),
        pytest.param(
            {"event": "tools/call.result", "decision": "allow", "outcome": "cancelled"}, "failure", id="cancelled"
        ),
        pytest.param({"event": "gateway.start", "decision": "allow", "outcome": "ok"}, "allowed", id="start"),
        pytest.param({"event": "something.new", "decision": "allow", "outcome": "odd"}, "other", id="unknown"),
    ],
)
def test_each_kind_of_record_gets_its_class(row: dict[str, Any], expected: str) -> None:
    full = {"id": 1, "ts": "2026-12-04T10:00:00.000000+00:00", "hash": "ab" * 32, **row}
    assert classify(full).name == expected
    assert json.loads(jsonl_line(full))["severity_class"] == expected
    assert _cef_fields(cef_line(full))[0] == SEVERITY[expected]


_TEXT = st.one_of(st.none(), st.sampled_from(["", "ok", "started", "deny", "allow", "error"]), st.text(max_size=12))
_ROWS = st.fixed_dictionaries(
    {
        "id": st.integers(1, 10**9),
        "ts": st.just("2026-12-04T10:00:00.000000+00:00"),
        "event": st.one_of(st.sampled_from(["tools/call", "tools/call.result", "breakglass.approve"]), _TEXT),
        "decision": _TEXT,
        "outcome": st.one_of(st.sampled_from(["dlp_blocked", "rate_limited", "unknown_tool", "cancelled"]), _TEXT),
        "rule": st.one_of(st.just("breakglass:g-1"), _TEXT),
        "detail": st.one_of(st.none(), st.just('{"dlp": [{"rule": "card"}]}'), st.text(max_size=20)),
        "subject": _TEXT,
    }
)


@settings(max_examples=300, deadline=None)
@given(row=_ROWS, tampered=st.booleans())
def test_any_record_gets_one_known_class_and_one_cef_line(row: dict[str, Any], tampered: bool) -> None:
    kind = classify(row, tampered=tampered)
    assert kind in SEVERITIES
    if tampered:
        assert kind.name == "tamper"
    elif str(row["rule"] or "").startswith("breakglass:"):
        assert kind.name == "breakglass"
    line = cef_line(row, "changed" if tampered else None)
    assert line.endswith("\n")
    assert len(line.splitlines()) == 1
    assert _cef_fields(line)[0] == kind.severity
    exported = json.loads(jsonl_line(row))
    assert {key: exported[key] for key in row} == row  # every column as stored
