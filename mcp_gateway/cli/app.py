"""The ``mcp-gateway`` command: serve, check, and read the evidence.

Every command takes ``--config PATH`` (default ``mcp-gateway.yaml`` or ``$MCP_GATEWAY_CONFIG``). A bad
configuration exits with status 2 and names the key and why.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import anyio
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.catalog import CatalogSet, load_catalogs
from mcp_gateway.cli import audit as audit_cli
from mcp_gateway.cli.breakglass import approval_app, breakglass_app
from mcp_gateway.config import Settings, load_settings
from mcp_gateway.errors import ConfigError, GatewayError
from mcp_gateway.policy import PolicySnapshot, load_policy

if TYPE_CHECKING:
    from mcp_gateway.inventory import Inventory, ModelEntry

__all__ = ["app", "main"]

app = typer.Typer(help="A governed MCP gateway.", no_args_is_help=True, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Validate configuration.", no_args_is_help=True)
token_app = typer.Typer(help="Development tokens (never for production).", no_args_is_help=True)
policy_app = typer.Typer(help="Inspect the Casbin policy.", no_args_is_help=True)
audit_app = typer.Typer(help="Read the audit trail.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(token_app, name="token")
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")
app.add_typer(breakglass_app, name="breakglass")
app.add_typer(approval_app, name="approval")
models_app = typer.Typer(help="The approved-model inventory (catalogs/models.yaml).", no_args_is_help=True)
app.add_typer(models_app, name="models")

out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $MCP_GATEWAY_CONFIG or mcp-gateway.yaml)."),
]


class Transport(StrEnum):
    stdio = "stdio"
    sse = "sse"
    streamable_http = "streamable-http"


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    cef = "cef"


class MatrixFormat(StrEnum):
    table = "table"
    csv = "csv"


def _fail(message: str, code: int = 2) -> NoReturn:
    # Messages quote config values and paths: never let them be read as markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        _fail(str(exc))


@app.command()
def serve(
    config: ConfigOption = None,
    transport: Annotated[Transport, typer.Option(help="stdio, or HTTP serving both /mcp and /sse.")] = Transport.stdio,
    host: Annotated[str | None, typer.Option(help="Override http.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override http.port.")] = None,
) -> None:
    """Serve MCP over stdio, or over HTTP (streamable HTTP at /mcp and SSE at /sse on one app)."""
    from mcp_gateway import server

    settings = _settings(config)
    if host is not None or port is not None:
        http = settings.http.model_copy(update={k: v for k, v in (("host", host), ("port", port)) if v is not None})
        settings = settings.model_copy(update={"http": http})
    try:
        if transport is Transport.stdio:
            anyio.run(server.serve_stdio, settings)
        else:
            err.print(f"mcp-gateway on http://{settings.http.host}:{settings.http.port} (/mcp, /sse)")
            anyio.run(server.run_http, settings)
    except ConfigError as exc:
        _fail(str(exc))
    except GatewayError as exc:
        _fail(str(exc), code=1)


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate settings, keys, catalogs and policies without starting a server."""
    from mcp_gateway.server import build_verifier

    settings = _settings(config)
    try:
        build_verifier(settings)
        catalogs = load_catalogs(settings.catalogs_dir, settings.egress)
        policy = load_policy(settings.policies_dir)
    except ConfigError as exc:
        _fail(str(exc))
    for name, tools in catalogs.names().items():
        out.print(f"catalog [bold]{name}[/]: {len(tools)} tools")
    approved = sum(entry.approved for entry in catalogs.models.entries.values())
    out.print(f"models: {len(catalogs.models.entries)} in the inventory, {approved} approved")
    out.print(f"policy: {len(policy.rules)} rules, {len(policy.groupings)} groupings, version {policy.version[:12]}")
    out.print("[green]configuration OK[/]")


@token_app.command("issue")
def token_issue(
    subject: Annotated[str, typer.Option("--subject", "-s", help="The `sub` claim.")],
    catalog: Annotated[str, typer.Option(help="internal or partner.")],
    role: Annotated[list[str] | None, typer.Option("--role", "-r", help="A role; repeat for more.")] = None,
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.")] = 300,
    amr: Annotated[list[str] | None, typer.Option(help="Authentication method; repeat for more.")] = None,
    config: ConfigOption = None,
) -> None:
    """Mint a short-lived token with the local development key (created on first use). Development only."""
    from mcp_gateway.devkeys import ensure_dev_key

    if catalog not in ("internal", "partner"):
        _fail(f"--catalog must be internal or partner, not {catalog!r}")
    settings = _settings(config)
    key = ensure_dev_key(settings.state_dir)
    token = key.mint(
        subject,
        roles=tuple(role or ()),
        catalog=catalog,
        issuer=settings.identity.issuer,
        audience=settings.identity.audience,
        ttl=ttl,
        amr=tuple(amr or ()),
    )
    err.print("[yellow]development token: signed by a local key, never use in production[/]")
    print(token)


def _policy(config: Path | None) -> tuple[Settings, PolicySnapshot]:
    settings = _settings(config)
    try:
        return settings, load_policy(settings.policies_dir)
    except ConfigError as exc:
        _fail(str(exc))


@policy_app.command("explain")
def policy_explain(
    subject: Annotated[str, typer.Option("--subject", "-s")],
    catalog: Annotated[str, typer.Option()],
    tool: Annotated[str, typer.Option()],
    role: Annotated[list[str] | None, typer.Option("--role", "-r")] = None,
    config: ConfigOption = None,
) -> None:
    """Why a caller may or may not call a tool: its effective subjects and every matching rule."""
    _, policy = _policy(config)
    explanation = policy.explain(subject, tuple(role or ()), catalog, tool)
    out.print(Text(f"subjects: {', '.join(explanation.subjects)}"))
    table = Table("effect", "rule")
    for rule in explanation.matched:
        table.add_row(rule.effect, Text(str(rule)))
    out.print(table)
    verdict = "[green]ALLOW[/]" if explanation.decision.allowed else "[red]DENY[/]"
    out.print(f"{verdict} by {escape(explanation.decision.rule)}")
    raise typer.Exit(0 if explanation.decision.allowed else 1)


@policy_app.command("add")
def policy_add(
    line: Annotated[str, typer.Argument(help='A policy line, e.g. "p, role:support, internal, crm.*, call, allow".')],
    file: Annotated[str, typer.Option("--file", help="The CSV file in policies_dir to change.")],
    actor: Annotated[str | None, typer.Option(help="Who makes the change (default: your login).")] = None,
    config: ConfigOption = None,
) -> None:
    """Add a policy line, if the resulting policy loads; the change (or its refusal) is an audit record."""
    _change_policy(line, file, actor, config, remove=False)


@policy_app.command("remove")
def policy_remove(
    line: Annotated[str, typer.Argument(help="The policy line to remove, exactly as in the file.")],
    file: Annotated[str, typer.Option("--file", help="The CSV file in policies_dir to change.")],
    actor: Annotated[str | None, typer.Option(help="Who makes the change (default: your login).")] = None,
    config: ConfigOption = None,
) -> None:
    """Remove a policy line, if the resulting policy loads; the change (or its refusal) is an audit record."""
    _change_policy(line, file, actor, config, remove=True)


def _change_policy(line: str, file: str, actor: str | None, config: Path | None, *, remove: bool) -> None:
    from mcp_gateway.changes import change_policy_line, default_actor

    settings = _settings(config)
    log = _audit_log(config)
    try:
        result = change_policy_line(
            log, settings.policies_dir, file, line, remove=remove, actor=actor or default_actor()
        )
        rows = log.by_request(result.request_id)
    except ConfigError as exc:
        _fail(str(exc))
    except GatewayError as exc:
        _fail(str(exc), code=1)
    finally:
        log.close()
    record = f"audit record {rows[0]['id']}" if rows else "audited"
    if not result.accepted:
        _fail(f"refused ({record}): {result.error}")
    out.print(Text(f"policy {result.old_digest[:12]} -> {str(result.new_digest)[:12]} ({record})"), soft_wrap=True)


# A subject no token can carry (token subjects have no control characters), so a role's row shows only what
# the role grants.
_ROLE_ONLY_SUBJECT = "\x00"


@policy_app.command("matrix")
def policy_matrix(
    catalog: Annotated[str | None, typer.Option(help="Only this catalog.")] = None,
    output: Annotated[MatrixFormat, typer.Option("--format")] = MatrixFormat.table,
    config: ConfigOption = None,
) -> None:
    """Who can call what: every role and user named in the policy against every tool in the catalogs."""
    settings, policy = _policy(config)
    try:
        catalogs = load_catalogs(settings.catalogs_dir, settings.egress)
    except ConfigError as exc:
        _fail(str(exc))
    subjects = sorted({rule.subject for rule in policy.rules} | {s for pair in policy.groupings for s in pair})
    rows: list[tuple[str, str, str, str]] = []
    for name, tools in sorted(catalogs.names().items()):
        if catalog is not None and name != catalog:
            continue
        for subject in subjects:
            kind, _, value = subject.partition(":")
            user, roles = (value, ()) if kind == "user" else (_ROLE_ONLY_SUBJECT, (value,))
            for tool in tools:
                decision = policy.decide(user, roles, name, tool)
                rows.append((name, subject, tool, "allow" if decision.allowed else "deny"))
    if output is MatrixFormat.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(("catalog", "subject", "tool", "decision"))
        writer.writerows(rows)
        return
    table = Table("catalog", "subject", "tool", "decision")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row[:3]), "[green]allow[/]" if row[3] == "allow" else "[dim]deny[/]")
    out.print(table)


def _catalogs(settings: Settings) -> CatalogSet:
    try:
        return load_catalogs(settings.catalogs_dir, settings.egress)
    except ConfigError as exc:
        _fail(str(exc))


@policy_app.command("lint")
def policy_lint(
    strict: Annotated[bool, typer.Option(help="Exit 1 on warnings too.")] = False,
    config: ConfigOption = None,
) -> None:
    """Find unknown tools and catalogs, shadowed rules, bad subjects and broad partner patterns."""
    from mcp_gateway.policy.tools import lint

    settings = _settings(config)
    issues = lint(settings.policies_dir, _catalogs(settings))
    for issue in issues:
        colour = "red" if issue.severity == "error" else "yellow"
        out.print(f"[{colour}]{issue.severity}[/] ", Text(f"{issue.where}: {issue.message}"), sep="")
    errors = sum(issue.severity == "error" for issue in issues)
    out.print(f"{errors} errors, {len(issues) - errors} warnings")
    raise typer.Exit(1 if errors or (strict and issues) else 0)


@policy_app.command("diff")
def policy_diff(
    old_dir: Annotated[Path, typer.Argument(help="The policy folder in force.")],
    new_dir: Annotated[Path, typer.Argument(help="The proposed policy folder.")],
    output: Annotated[MatrixFormat, typer.Option("--format")] = MatrixFormat.table,
    config: ConfigOption = None,
) -> None:
    """Who gains and who loses which tool between two policy versions (exit 1 when access changes)."""
    from mcp_gateway.policy.tools import diff

    settings = _settings(config)
    try:
        gained, lost = diff(old_dir, new_dir, _catalogs(settings))
    except ConfigError as exc:
        _fail(str(exc))
    rows = [("gains", *item) for item in gained] + [("loses", *item) for item in lost]
    if output is MatrixFormat.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(("change", "subject", "catalog", "tool"))
        writer.writerows(rows)
    else:
        table = Table("change", "subject", "catalog", "tool")
        for row in rows:
            table.add_row("[green]gains[/]" if row[0] == "gains" else "[red]loses[/]", *(Text(c) for c in row[1:]))
        out.print(table)
        out.print(f"{len(gained)} gained, {len(lost)} lost")
    raise typer.Exit(1 if rows else 0)


@policy_app.command("test")
def policy_test(
    cases_file: Annotated[Path, typer.Argument(help="CSV: subject,roles,catalog,tool,expect")],
    config: ConfigOption = None,
) -> None:
    """Check a table of expected decisions against the policy; exit 1 on any mismatch (for CI)."""
    from mcp_gateway.policy.tools import read_cases, run_cases

    _, policy = _policy(config)
    try:
        cases = read_cases(cases_file)
    except ConfigError as exc:
        _fail(str(exc))
    failed = 0
    for case, actual, rule in run_cases(policy, cases):
        if actual != case.expect:
            failed += 1
            message = f"{cases_file.name}:{case.line}: {case.subject} {list(case.roles)} {case.catalog}/{case.tool}: "
            out.print(Text(message + f"expected {case.expect}, got {actual} by {rule}"), style="red")
    out.print(f"{len(cases) - failed} passed, {failed} failed")
    raise typer.Exit(1 if failed else 0)


def _audit_log(config: Path | None) -> AuditLog:
    settings = _settings(config)
    try:
        return AuditLog(settings.database_url)
    except GatewayError as exc:
        _fail(str(exc), code=1)


@audit_app.command("tail")
def audit_tail(
    count: Annotated[int, typer.Option("-n", "--count", min=1, max=10_000)] = 20,
    config: ConfigOption = None,
) -> None:
    """The most recent audit rows."""
    log = _audit_log(config)
    table = Table("id", "time", "event", "subject", "catalog", "tool", "decision", "rule", "outcome", "ms")
    for row in log.tail(count):
        # Audit text comes from callers (tool names, subjects): render it literally, never as markup.
        cells = (
            str(row["id"]),
            row["ts"][11:23],
            row["event"],
            row["subject"] or "",
            row["catalog"] or "",
            row["tool"] or "",
            row["decision"],
            row["rule"] or "",
            row["outcome"],
            f"{row['latency_ms']:.2f}" if row["latency_ms"] is not None else "",
        )
        table.add_row(*(Text(_printable(cell)) for cell in cells))
    out.print(table)
    log.close()


@audit_app.command("export")
def audit_export(
    output: Annotated[ExportFormat, typer.Option("--format")] = ExportFormat.jsonl,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time; rows at or after it.")] = None,
    bundle: Annotated[
        Path | None, typer.Option(help="Write a bundle that `audit verify --bundle` checks with no database.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Every audit row as JSON lines or CEF, streamed, for a SIEM; or a verifiable bundle with --bundle."""
    from mcp_gateway.audit.checkpoint import merge_checkpoints, read_checkpoint_file
    from mcp_gateway.audit.export import cef_line, jsonl_line, write_bundle
    from mcp_gateway.cli.audit import progress_bar

    cutoff = _utc(since) if since is not None else None
    settings = _settings(config)
    log = _audit_log(config)
    with progress_bar(err, log.last_id(), "exporting") as tick:
        rows = _ticking(log.iter_rows(cutoff, batch=5000), tick)
        if bundle is not None:
            checkpoints = merge_checkpoints(log.checkpoints(), read_checkpoint_file(settings.checkpoint_path))
            with bundle.open("w", encoding="utf-8") as handle:
                count = write_bundle(handle, rows, checkpoints, since=cutoff, key_id=None)
            err.print(f"{count} records and {len(checkpoints)} checkpoints written to {escape(str(bundle))}")
        else:
            line = cef_line if output is ExportFormat.cef else jsonl_line
            write = sys.stdout.write
            for row in rows:
                write(line(row))
    log.close()


def _ticking(rows: Iterator[dict[str, Any]], tick: Callable[[int], None]) -> Iterator[dict[str, Any]]:
    for done, row in enumerate(rows, 1):
        if done % 10_000 == 0:
            tick(done)
        yield row


def _printable(text: str) -> str:
    """Caller-influenced text made safe for a terminal: control and format characters shown escaped."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def _utc(value: str) -> str:
    """An ISO 8601 time in the trail's own spelling (UTC, microseconds), so it compares correctly as text."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"--since: {value!r} is not an ISO 8601 time such as 2026-11-25T09:00:00Z")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


audit_cli.register(audit_app, _settings, _fail, out, err)


def main() -> None:
    app()


# -- models ---------------------------------------------------------------------------------------------------


def _inventory(config: Path | None) -> Inventory:
    from mcp_gateway.inventory import INVENTORY_FILE, load_inventory

    settings = _settings(config)
    try:
        return load_inventory(settings.catalogs_dir / INVENTORY_FILE, settings.egress)
    except ConfigError as exc:
        _fail(str(exc))


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err)


@models_app.command("list")
def models_list(config: ConfigOption = None) -> None:
    """Every model in the inventory: endpoint, version, owner, approval and the catalogs that may use it."""
    inventory = _inventory(config)
    table = Table("name", "provider", "served model", "version", "owner", "approved", "catalogs", "cap", "fallback")
    for entry in inventory.entries.values():
        cells = (
            entry.name,
            entry.provider,
            entry.served_model,
            entry.version,
            entry.owner,
            "yes" if entry.approved else "no",
            ", ".join(entry.catalogs),
            str(entry.max_tokens),
            entry.fallback or "",
        )
        table.add_row(*(Text(cell) for cell in cells))
    out.print(table)


@models_app.command("verify")
def models_verify(config: ConfigOption = None) -> None:
    """Hash each weights file and compare it with the inventory's sha256; exit 1 on a mismatch or missing file."""
    from mcp_gateway.inventory import verify_weights

    inventory = _inventory(config)
    with _bar() as bar:

        def progress(entry: ModelEntry, path: Path) -> Callable[[int], None]:
            task = bar.add_task(entry.name, total=path.stat().st_size)
            return lambda advance: bar.advance(task, advance)

        checks = verify_weights(inventory, progress)
    bad = False
    for check in checks:
        bad |= check.status in ("mismatch", "missing")
        out.print(Text(f"{check.name}: {check.status}" + (f" ({check.path})" if check.path else "")))
    raise typer.Exit(1 if bad else 0)


@models_app.command("import")
def models_import(
    file: Annotated[Path, typer.Argument(help="The weights file brought in by hand.", exists=True, dir_okay=False)],
    name: Annotated[str, typer.Option("--name", help="The inventory entry it belongs to.")],
    sha256: Annotated[str, typer.Option("--sha256", help="The expected SHA-256, from the release record.")],
    config: ConfigOption = None,
) -> None:
    """Copy weights into the artifact folder, only if their SHA-256 matches (and matches the inventory's)."""
    from mcp_gateway.inventory import import_weights

    inventory = _inventory(config)
    try:
        with _bar() as bar:
            task = bar.add_task(name, total=file.stat().st_size)
            placed = import_weights(inventory, name, file, sha256, lambda advance: bar.advance(task, advance))
    except ConfigError as exc:
        _fail(str(exc), code=1)
    except OSError as exc:
        _fail(f"models import: {exc}", code=1)
    out.print(Text(f"imported {name} -> {placed}"))
