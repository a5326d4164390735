"""``mcp-gateway policy …``: explain a decision, change a line (audited), and check a policy before it ships.

``add`` and ``remove`` run as the verified operator of ``--token-file`` (or ``$MCP_GATEWAY_TOKEN``/``_FILE``),
who needs a role in ``admin.policy_roles``; every other command reads only and works offline, without a token.

``explain`` and ``test`` exit with the decision (0 allow, 1 deny or a failed case), ``lint`` with 1 on errors
and ``diff`` with 1 when access changes, so each can gate a CI job.
"""

from __future__ import annotations

import csv
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.catalog import load_catalogs
from mcp_gateway.cli.common import ConfigOption, TokenFileOption, out
from mcp_gateway.config import Settings, load_settings
from mcp_gateway.errors import ConfigError
from mcp_gateway.policy import PolicySnapshot, load_policy

__all__ = ["policy_app"]

policy_app = typer.Typer(help="Inspect the Casbin policy.", no_args_is_help=True)


class MatrixFormat(StrEnum):
    table = "table"
    csv = "csv"


FormatOption = Annotated[MatrixFormat, typer.Option("--format", help="A table to read, or CSV for a script.")]
FileOption = Annotated[str, typer.Option("--file", help="The CSV file in policies_dir to change.")]


def _policy(config: Path | None) -> tuple[Settings, PolicySnapshot]:
    settings = load_settings(config)
    return settings, load_policy(settings.policies_dir)


@policy_app.command("explain")
def policy_explain(
    subject: Annotated[str, typer.Option("--subject", "-s", help="The caller's `sub` claim.")],
    catalog: Annotated[str, typer.Option(help="The caller's catalog: internal or partner.")],
    tool: Annotated[str, typer.Option(help="The tool to be called.")],
    role: Annotated[
        list[str] | None, typer.Option("--role", "-r", help="A role of the caller; repeat for more.")
    ] = None,
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
    file: FileOption,
    token_file: TokenFileOption = None,
    config: ConfigOption = None,
) -> None:
    """Add a policy line, if the resulting policy loads; the change (or its refusal) is an audit record."""
    _change_policy(line, file, token_file, config, remove=False)


@policy_app.command("remove")
def policy_remove(
    line: Annotated[str, typer.Argument(help="The policy line to remove, exactly as in the file.")],
    file: FileOption,
    token_file: TokenFileOption = None,
    config: ConfigOption = None,
) -> None:
    """Remove a policy line, if the resulting policy loads; the change (or its refusal) is an audit record."""
    _change_policy(line, file, token_file, config, remove=True)


def _change_policy(line: str, file: str, token_file: Path | None, config: Path | None, *, remove: bool) -> None:
    # Lazy: changes.py takes its request ids from the gateway core, which brings telemetry and the backends
    # with it; only add and remove need any of that.
    from mcp_gateway.changes import change_policy_line
    from mcp_gateway.operators import operator_for

    settings = load_settings(config)
    # Who, before anything else: an operator who is not verified, or lacks the role, changes and learns nothing.
    operator = operator_for(settings, "policy", f"policy {'remove' if remove else 'add'}", token_file)
    log = AuditLog(settings.database_url)
    try:
        result = change_policy_line(log, settings.policies_dir, file, line, remove=remove, operator=operator)
        rows = log.by_request(result.request_id)
    finally:
        log.close()
    record = f"audit record {rows[0]['id']}" if rows else "audited"
    if not result.accepted:
        # The resulting policy does not load: a configuration error like any other, though already audited.
        raise ConfigError(f"refused ({record}): {result.error}")
    out.print(
        Text(f"policy {result.old_digest[:12]} -> {str(result.new_digest)[:12]} by {operator.label} ({record})"),
        soft_wrap=True,
    )


# A subject no token can carry (token subjects have no control characters), so a role's row shows only what
# the role grants.
_ROLE_ONLY_SUBJECT = "\x00"


@policy_app.command("matrix")
def policy_matrix(
    catalog: Annotated[str | None, typer.Option(help="Only this catalog.")] = None,
    output: FormatOption = MatrixFormat.table,
    config: ConfigOption = None,
) -> None:
    """Who can call what: every role and user named in the policy against every tool in the catalogs."""
    settings, policy = _policy(config)
    catalogs = load_catalogs(settings.catalogs_dir, settings.egress)
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


@policy_app.command("lint")
def policy_lint(
    strict: Annotated[bool, typer.Option(help="Exit 1 on warnings too.")] = False,
    config: ConfigOption = None,
) -> None:
    """Find unknown tools and catalogs, shadowed rules, bad subjects and broad partner patterns."""
    from mcp_gateway.policy.tools import lint

    settings = load_settings(config)
    issues = lint(settings.policies_dir, load_catalogs(settings.catalogs_dir, settings.egress))
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
    output: FormatOption = MatrixFormat.table,
    config: ConfigOption = None,
) -> None:
    """Who gains and who loses which tool between two policy versions (exit 1 when access changes)."""
    from mcp_gateway.policy.tools import diff

    settings = load_settings(config)
    gained, lost = diff(old_dir, new_dir, load_catalogs(settings.catalogs_dir, settings.egress))
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
    cases = read_cases(cases_file)
    failed = 0
    for case, actual, rule in run_cases(policy, cases):
        if actual != case.expect:
            failed += 1
            message = f"{cases_file.name}:{case.line}: {case.subject} {list(case.roles)} {case.catalog}/{case.tool}: "
            out.print(Text(message + f"expected {case.expect}, got {actual} by {rule}"), style="red")
    out.print(f"{len(cases) - failed} passed, {failed} failed")
    raise typer.Exit(1 if failed else 0)
