"""``mcp-gateway breakglass …`` and ``mcp-gateway approval …``: separation of duties from the command line.

Every command acts as the subject of a verified token (``--token-file``, else ``MCP_GATEWAY_TOKEN`` or
``MCP_GATEWAY_TOKEN_FILE``), checked exactly as the gateway checks callers. ``request`` is a caller asking for
their own access; every other command is an operator's (mcp_gateway.operators) and checks a role: approving and
denying need an approver role (``breakglass.approver_roles``), reviewing and listing a reviewer
(``admin.reviewer_roles``) or approver role. The actor recorded is the token's ``sub``, ``jti`` and ``amr``. A
refused command exits with 1, a bad configuration with 2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.breakglass import OUTCOMES, BreakGlass, Grant, iso, parse_ttl
from mcp_gateway.catalog import load_catalogs
from mcp_gateway.cli.common import ConfigOption, TokenFileOption, out
from mcp_gateway.config import Settings, load_settings
from mcp_gateway.errors import ForbiddenError
from mcp_gateway.identity import Principal
from mcp_gateway.operators import Operator, operator_for, require_role, verified_operator

__all__ = ["approval_app", "breakglass_app"]

breakglass_app = typer.Typer(help="Time-bound emergency access, approved by a second person.", no_args_is_help=True)
approval_app = typer.Typer(help="Approve or deny held calls to tools with `approval: required`.", no_args_is_help=True)

GrantId = Annotated[str, typer.Argument(help="The grant's id, as `breakglass request` printed it or `list` shows.")]
ApprovalId = Annotated[str, typer.Argument(help="The held call's id, from the caller's error or `approval list`.")]


def _caller(settings: Settings, token_file: Path | None) -> Principal:
    """The verified caller of ``token_file``, else of ``$MCP_GATEWAY_TOKEN`` or ``$MCP_GATEWAY_TOKEN_FILE``, with
    the catalog its audience picks (a request is for the caller's own catalog).

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


def _reader(settings: Settings, token_file: Path | None, action: str) -> Operator:
    """The verified operator, if they hold a reviewer or an approver role.

    Raises:
        UnauthenticatedError: no token, or one the verifier refuses.
        ForbiddenError: neither role.
    """
    operator = verified_operator(settings, token_file)
    try:
        require_role(operator, settings, "reviewer", action)
    except ForbiddenError:
        try:
            require_role(operator, settings, "approver", action)
        except ForbiddenError as exc:
            raise ForbiddenError(f"{exc} (a reviewer role in admin.reviewer_roles also allows it)") from exc
    return operator


@contextmanager
def _session(settings: Settings) -> Iterator[BreakGlass]:
    audit: AuditLog | None = None
    store: BreakGlass | None = None
    try:
        audit = AuditLog(settings.database_url)
        store = BreakGlass(settings.database_url, settings.breakglass, audit)
        yield store
    finally:
        if store is not None:
            store.close()
        if audit is not None:
            audit.close()


def _show(grants: list[Grant]) -> None:
    table = Table("id", "state", "subject", "catalog", "tool", "requested", "expires", "approver", "review", "reason")
    for grant in grants:
        review = (
            grant.reviews[0]["outcome"] if grant.reviews else f"due {iso(grant.review_due)}" if grant.review_due else ""
        )
        cells = (grant.id, grant.state, grant.subject, grant.catalog, grant.tool, iso(grant.requested_at),
                 iso(grant.expires_at), grant.approver or "", str(review), grant.reason)  # fmt: skip
        table.add_row(*(Text(cell) for cell in cells))  # caller-supplied text: never markup
    out.print(table)


@breakglass_app.command("request")
def request(
    tool: Annotated[str, typer.Option(help="The one tool you need.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the audit trail.")],
    ttl: Annotated[str, typer.Option(help="How long, e.g. 30m (at most breakglass.max_ttl).")] = "30m",
    token_file: TokenFileOption = None,
    config: ConfigOption = None,
) -> None:
    """Ask for time-bound access to one tool. Needs a token with a second factor (amr)."""
    settings = load_settings(config)
    principal = _caller(settings, token_file)
    with _session(settings) as store:
        catalogs = load_catalogs(settings.catalogs_dir, settings.egress)
        exists = catalogs.lookup(principal.catalog, tool) is not None
        grant = store.request(principal, tool, reason, parse_ttl(ttl), tool_exists=exists)
        out.print(Text(f"requested grant {grant.id} for {grant.subject} on {grant.catalog}/{grant.tool}"))
        out.print(Text(f"a second person with an approver role runs: mcp-gateway breakglass approve {grant.id}"))


@breakglass_app.command("approve")
def approve(grant_id: GrantId, token_file: TokenFileOption = None, config: ConfigOption = None) -> None:
    """Approve someone else's request; the grant runs from now for its TTL. Needs an approver role."""
    settings = load_settings(config)
    operator = operator_for(settings, "approver", "breakglass approve", token_file)
    with _session(settings) as store:
        grant = store.approve(operator, grant_id)
        out.print(Text(f"grant {grant.id} approved until {iso(grant.expires_at)}"))


@breakglass_app.command("revoke")
def revoke(grant_id: GrantId, token_file: TokenFileOption = None, config: ConfigOption = None) -> None:
    """End a grant now (the requester or an approver)."""
    settings = load_settings(config)
    operator = verified_operator(settings, token_file)
    with _session(settings) as store:
        store.revoke(operator, grant_id)
        out.print(Text(f"grant {grant_id} revoked"))


@breakglass_app.command("list")
def list_grants(
    active: Annotated[bool, typer.Option(help="Only pending and approved, unexpired grants.")] = False,
    overdue: Annotated[
        bool, typer.Option(help="Only ended grants whose review is late (breakglass.review_within).")
    ] = False,
    token_file: TokenFileOption = None,
    config: ConfigOption = None,
) -> None:
    """Every grant with its state (pending, approved, expired, revoked, unrecorded). Needs a reviewer or approver
    role."""
    settings = load_settings(config)
    _reader(settings, token_file, "breakglass list")
    with _session(settings) as store:
        grants = store.overdue() if overdue else store.grants()
        _show([grant for grant in grants if grant.state in ("pending", "approved")] if active else grants)


@breakglass_app.command("review")
def review(
    grant_id: Annotated[str | None, typer.Argument(help="One grant; default: all (report only).")] = None,
    outcome: Annotated[str | None, typer.Option(help=f"Sign the grant off: one of {', '.join(OUTCOMES)}.")] = None,
    note: Annotated[str, typer.Option(help="With --outcome: what you checked; kept in the audit trail.")] = "",
    token_file: TokenFileOption = None,
    config: ConfigOption = None,
) -> None:
    """Every use of a grant and its history; with --outcome, your sign-off (not the requester's or approver's).
    Needs a reviewer or approver role."""
    settings = load_settings(config)
    operator = _reader(settings, token_file, "breakglass review")
    with _session(settings) as store:
        if outcome is not None:
            if grant_id is None:
                raise typer.BadParameter("--outcome signs off one grant: give its ID")
            signed = store.review(operator, grant_id, outcome, note)
            out.print(Text(f"grant {signed.id} reviewed: {outcome} (chain record {signed.reviews[0]['seq']})"))
            return
        grants = [store.get(grant_id)] if grant_id else store.grants()
        _report(settings, grants)


def _report(settings: Settings, grants: list[Grant]) -> None:
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
        if grant.problem:
            out.print(Text(f"  NOT ON THE RECORD: {grant.problem}; never honoured"))
        for signed in grant.reviews:
            out.print(
                Text(f"  reviewed {signed['outcome']} by {signed['reviewer']} at {signed['at']}: {signed['note']}")
            )
        if not grant.reviews and grant.review_due is not None:
            out.print(Text(f"  review due by {iso(grant.review_due)}"))
        table = Table("time", "event", "tool", "outcome", "request")
        for row in uses[grant.id]:
            cells = (str(row["ts"]), str(row["event"]), str(row["tool"]), str(row["outcome"]), str(row["request_id"]))
            table.add_row(*(Text(cell) for cell in cells))
        out.print(table)
        out.print(Text(f"  {sum(row['event'] == 'tools/call' for row in uses[grant.id])} calls under this grant"))


@approval_app.command("list")
def list_calls(token_file: TokenFileOption = None, config: ConfigOption = None) -> None:
    """Held calls and their state. Needs a reviewer or approver role."""
    settings = load_settings(config)
    _reader(settings, token_file, "approval list")
    with _session(settings) as store:
        table = Table("id", "state", "subject", "catalog", "tool", "arguments digest", "expires", "approver")
        for call in store.calls():
            cells = (call.id, call.state, call.subject, call.catalog, call.tool, call.args_digest[:16],
                     iso(call.expires_at), call.approver or "")  # fmt: skip
            table.add_row(*(Text(cell) for cell in cells))
        out.print(table)


@approval_app.command("show")
def show_call(approval_id: ApprovalId, token_file: TokenFileOption = None, config: ConfigOption = None) -> None:
    """One held call with its arguments as DLP redacts them: what you approve. Needs a reviewer or approver role."""
    settings = load_settings(config)
    _reader(settings, token_file, "approval show")
    with _session(settings) as store:
        call = store.approvals.get(approval_id)
    out.print(Text(f"held call {call.id} [{call.state}] {call.subject} -> {call.catalog}/{call.tool}"))
    out.print(
        Text(f"  requested {iso(call.requested_at)}, expires {iso(call.expires_at)}; policy {call.policy_version}")
    )
    out.print(Text(f"  arguments digest {call.args_digest}; approver: {call.approver or '-'}"))
    if call.problem:
        out.print(Text(f"  NOT ON THE RECORD: {call.problem}; never honoured"))
    out.print(Text("  arguments (DLP-redacted):"))
    out.print(Text(json.dumps(call.shown, indent=2, ensure_ascii=False, sort_keys=True)))


@approval_app.command("approve")
def approve_call(approval_id: ApprovalId, token_file: TokenFileOption = None, config: ConfigOption = None) -> None:
    """Approve one held call; the caller repeats exactly that call to run it. Needs an approver role."""
    settings = load_settings(config)
    operator = operator_for(settings, "approver", "approval approve", token_file)
    with _session(settings) as store:
        call = store.decide_call(operator, approval_id, approve=True)
        out.print(Text(f"call {call.id} approved until {iso(call.expires_at)}"))


@approval_app.command("deny")
def deny_call(approval_id: ApprovalId, token_file: TokenFileOption = None, config: ConfigOption = None) -> None:
    """Deny one held call. Needs an approver role."""
    settings = load_settings(config)
    operator = operator_for(settings, "approver", "approval deny", token_file)
    with _session(settings) as store:
        store.decide_call(operator, approval_id, approve=False)
        out.print(Text(f"call {approval_id} denied"))
