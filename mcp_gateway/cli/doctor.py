"""``mcp-gateway doctor``: the air-gap self-test, as a table for people and JSON for CI (``mcp_gateway.doctor``)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from mcp_gateway.cli.common import ConfigOption, out
from mcp_gateway.config import load_settings
from mcp_gateway.doctor import Finding, Status, run_checks

__all__ = ["doctor"]

_STYLE = {Status.PASS: "green", Status.WARN: "yellow", Status.FAIL: "bold red"}
_MAX_CELL = 300


class Format(StrEnum):
    table = "table"
    json = "json"


def _cell(text: str) -> str:
    """A cell that shows a configuration value as it is, but cannot break the table: no markup, no control
    characters, a bounded length."""
    shown = "".join(char if char.isprintable() else f"\\x{ord(char):02x}" for char in text)
    if len(shown) > _MAX_CELL:
        shown = shown[:_MAX_CELL] + f"… ({len(shown)} characters)"
    return escape(shown)


def _table(findings: list[Finding]) -> Table:
    table = Table(title="mcp-gateway doctor", show_lines=False)
    for column in ("check", "subject", "status", "reason"):
        table.add_column(column, overflow="fold")
    for finding in findings:
        style = _STYLE[finding.status]
        table.add_row(
            _cell(finding.check), _cell(finding.subject), f"[{style}]{finding.status.value}[/]", _cell(finding.reason)
        )
    return table


def doctor(
    config: ConfigOption = None,
    output: Annotated[Format, typer.Option("--format", help="table (people) or json (CI).")] = Format.table,
) -> None:
    """Self-test the air gap before go-live: endpoints on egress.allow, the guard's refusals shown with real
    requests, proxy variables ignored, key and database permissions, lifetime caps, TLS, durability.

    Exits 1 on any fail (warns do not fail), 2 when the configuration does not load.
    """
    settings = load_settings(config)
    findings = run_checks(settings)
    counts = {status.value: sum(finding.status is status for finding in findings) for status in Status}
    if output is Format.json:
        document = {"ok": counts["fail"] == 0, "counts": counts, "findings": [f.as_dict() for f in findings]}
        typer.echo(json.dumps(document, indent=2, ensure_ascii=True))
    else:
        out.print(_table(findings))
        summary = ", ".join(f"{count} {status}" for status, count in counts.items())
        verdict = "[bold red]FAIL[/]" if counts["fail"] else "[green]OK[/]"
        out.print(f"{verdict}: {summary}")
    if counts["fail"]:
        raise typer.Exit(1)
