"""``mcp-gateway breakglass …`` and ``mcp-gateway approval …``: separation of duties from the command line.

Every command acts as the subject of a verified token (``--token-file``, else ``MCP_GATEWAY_TOKEN`` or
``MCP_GATEWAY_TOKEN_FILE``), checked exactly as the gateway checks callers. A refused command exits with 1, a
bad configuration with 2.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.breakglass import BreakGlass, Grant, iso, parse_ttl
from mcp_gateway.catalog import load_catalogs
from mcp_gateway.cli.common import ConfigOption, out
from mcp_gateway.config import Settings, load_settings
from mcp_gateway.identity import Principal

__all__ = ["approval_app", "breakglass_app"]

breakglass_app = typer.Typer(help="Time-bound emergency access, approved by a second person.", no_args_is_help=True)
approval_app = typer.Typer(help="Approve or deny held calls to tools with `approval: required`.", no_args_is_help=True)

TokenOption = Annotated[
    Path | None, typer.Option("--token-file", help="Your token (default: $MCP_GATEWAY_TOKEN or _FILE).")
]
GrantId = Annotated[str, typer.Argument(help="The grant's id, as `breakglass request` printed it or `list` shows.")]
ApprovalId = Annotated[str, typer.Argument(help="The held call's id, from the caller's error or `approval list`.")]


def _caller(settings: Settings, token_file: Path | None) -> Principal:
    """The verified subject of ``token_file``, else of ``$MCP_GATEWAY_TOKEN`` or ``$MCP_GATEWAY_TOKEN_FILE``.

    Raises:
        ConfigError: the verification keys cannot be loaded.
        UnauthenticatedError: no token, an unreadable token file, or a token the verifier refuses.
    """
    # Checked exactly as the stdio transport checks its caller, with its own code (imported lazily: it is heavy).
    from mcp_gateway.server import build_verifier
    from mcp_gateway.transports.stdio import stdio_principal

    environ = dict(os.environ)
    if token_file is not None:
        environ.pop("MCP_GATEWAY_TOKEN", None)
        environ["MCP_GATEWAY_TOKEN_FILE"] = str(token_file)
    return stdio_principal(build_verifier(settings), environ)()


@contextmanager
def _session(config: Path | None, token_file: Path | None) -> Iterator[tuple[Settings, BreakGlass, Principal]]:
    settings = load_settings(config)
    audit: AuditLog | None = None
    store: BreakGlass | None = None
    try:
        principal = _caller(settings, token_file)
        audit = AuditLog(settings.database_url)
        store = BreakGlass(settings.database_url, settings.breakglass, audit)
        yield settings, store, principal
    finally:
        if store is not None:
            store.close()
        if audit is not None:
            audit.close()


def _show(grants: list[Grant]) -> None:
    table = Table("id", "state", "subject", "catalog", "tool", "requested", "expires", "approver", "reason")
    for grant in grants:
        cells = (
            grant.id,
            grant.state,
            grant.subject,
            grant.catalog,
            grant.tool,
            iso(grant.requested_at),
            iso(grant.expires_at),
            grant.approver or "",
            grant.reason,
        )
        table.add_row(*(Text(cell) for cell in cells))  # caller-supplied text: never markup
    out.print(table)


@breakglass_app.command("request")
def request(
    tool: Annotated[str, typer.Option(help="The one tool you need.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the audit trail.")],
    ttl: Annotated[str, typer.Option(help="How long, e.g. 30m (at most breakglass.max_ttl).")] = "30m",
    token_file: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """Ask for time-bound access to one tool. Needs a token with a second factor (amr)."""
    with _session(config, token_file) as (settings, store, principal):
        catalogs = load_catalogs(settings.catalogs_dir, settings.egress)
        exists = catalogs.lookup(principal.catalog, tool) is not None
        grant = store.request(principal, tool, reason, parse_ttl(ttl), tool_exists=exists)
        out.print(Text(f"requested grant {grant.id} for {grant.subject} on {grant.catalog}/{grant.tool}"))
        out.print(Text(f"a second person with an approver role runs: mcp-gateway breakglass approve {grant.id}"))


@breakglass_app.command("approve")
def approve(grant_id: GrantId, token_file: TokenOption = None, config: ConfigOption = None) -> None:
    """Approve someone else's request; the grant runs from now for its TTL."""
    with _session(config, token_file) as (_, store, principal):
        grant = store.approve(principal, grant_id)
        out.print(Text(f"grant {grant.id} approved until {iso(grant.expires_at)}"))


@breakglass_app.command("revoke")
def revoke(grant_id: GrantId, token_file: TokenOption = None, config: ConfigOption = None) -> None:
    """End a grant now (the requester or an approver)."""
    with _session(config, token_file) as (_, store, principal):
        store.revoke(principal, grant_id)
        out.print(Text(f"grant {grant_id} revoked"))


@breakglass_app.command("list")
def list_grants(
    active: Annotated[bool, typer.Option(help="Only pending and approved, unexpired grants.")] = False,
    token_file: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """Every grant with its state (pending, approved, expired, revoked)."""
    with _session(config, token_file) as (_, store, _principal):
        grants = store.grants()
        _show([grant for grant in grants if grant.state in ("pending", "approved")] if active else grants)


@breakglass_app.command("review")
def review(
    grant_id: Annotated[str | None, typer.Argument(help="One grant; default: all.")] = None,
    token_file: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """Every use of every grant: the audit rows of calls decided by a grant, and the grant's own history."""
    with _session(config, token_file) as (settings, store, _principal):
        grants = [store.get(grant_id)] if grant_id else store.grants()
        wanted = {grant.id for grant in grants}
        uses: dict[str, list[dict[str, object]]] = {grant.id: [] for grant in grants}
        log = AuditLog(settings.database_url)
        try:
            for row in log.iter_rows():
                rule = row["rule"] or ""
                if rule.startswith("breakglass:") and rule.removeprefix("breakglass:") in wanted:
                    uses[rule.removeprefix("breakglass:")].append(row)
        finally:
            log.close()
        for grant in grants:
            out.print(Text(f"grant {grant.id} [{grant.state}] {grant.subject} -> {grant.catalog}/{grant.tool}"))
            out.print(Text(f"  reason: {grant.reason}; approver: {grant.approver or '-'}"))
            table = Table("time", "event", "tool", "outcome", "request")
            for row in uses[grant.id]:
                cells = (
                    str(row["ts"]),
                    str(row["event"]),
                    str(row["tool"]),
                    str(row["outcome"]),
                    str(row["request_id"]),
                )
                table.add_row(*(Text(cell) for cell in cells))
            out.print(table)
            out.print(Text(f"  {sum(row['event'] == 'tools/call' for row in uses[grant.id])} calls under this grant"))


@approval_app.command("list")
def list_calls(token_file: TokenOption = None, config: ConfigOption = None) -> None:
    """Held calls and their state."""
    with _session(config, token_file) as (_, store, _principal):
        table = Table("id", "state", "subject", "catalog", "tool", "arguments digest", "expires", "approver")
        for call in store.calls():
            cells = (
                call.id,
                call.state,
                call.subject,
                call.catalog,
                call.tool,
                call.args_digest[:16],
                iso(call.expires_at),
                call.approver or "",
            )
            table.add_row(*(Text(cell) for cell in cells))
        out.print(table)


@approval_app.command("approve")
def approve_call(approval_id: ApprovalId, token_file: TokenOption = None, config: ConfigOption = None) -> None:
    """Approve one held call; the caller repeats exactly that call to run it."""
    with _session(config, token_file) as (_, store, principal):
        call = store.decide_call(principal, approval_id, approve=True)
        out.print(Text(f"call {call.id} approved until {iso(call.expires_at)}"))


@approval_app.command("deny")
def deny_call(approval_id: ApprovalId, token_file: TokenOption = None, config: ConfigOption = None) -> None:
    """Deny one held call."""
    with _session(config, token_file) as (_, store, principal):
        store.decide_call(principal, approval_id, approve=False)
        out.print(Text(f"call {approval_id} denied"))
