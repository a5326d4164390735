"""``mcp-gateway catalog pin | drift``: the upstream tool definitions the gateway publishes, and how they changed.

``pin`` changes what callers can reach: it runs as the verified operator of ``--token-file`` (a role in
``admin.policy_roles``), writes ``catalogs/pins/<catalog>.json`` and is an audit record (``catalog.pin``); a tool
with poisoning findings is refused unless ``--accept-findings`` is given, and that acceptance is in the record.
``drift`` reads only and needs no token: new, changed (with a field diff) and removed tools, and their findings;
it exits 1 when there is any, so it can gate a CI job.
"""

from __future__ import annotations

from typing import Annotated

import anyio
import typer
from rich.text import Text

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.catalog import load_catalogs
from mcp_gateway.cli.common import ConfigOption, TokenFileOption, out
from mcp_gateway.config import load_settings
from mcp_gateway.errors import ConfigError

__all__ = ["catalog_app"]

catalog_app = typer.Typer(
    help="Upstream MCP servers' tools: pin what they say, see how it drifted.", no_args_is_help=True
)

CatalogOption = Annotated[str | None, typer.Option("--catalog", help="The catalog (default: every catalog).")]


@catalog_app.command("pin")
def catalog_pin(
    catalog: Annotated[str, typer.Option("--catalog", help="The catalog whose upstream tools to pin.")] = "internal",
    server: Annotated[str | None, typer.Option("--server", help="Only this server.")] = None,
    tool: Annotated[str | None, typer.Option("--tool", help="Only this upstream tool (its name upstream).")] = None,
    accept_findings: Annotated[
        bool, typer.Option("--accept-findings", help="Pin tools with poisoning findings too (audited).")
    ] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the audit record.")] = None,
    token_file: TokenFileOption = None,
    config: ConfigOption = None,
) -> None:
    """Pin what the upstreams list now; the pin (and any accepted findings) is an audit record."""
    # Lazy: the federation brings the MCP client and the audit core; only pin and drift need them.
    from mcp_gateway.federation.pinning import pin_tools
    from mcp_gateway.operators import operator_for

    settings = load_settings(config)
    operator = operator_for(settings, "policy", "catalog pin", token_file)
    catalogs = load_catalogs(settings.catalogs_dir, settings.egress)
    log = AuditLog(settings.database_url)
    try:
        result = anyio.run(
            lambda: pin_tools(
                log,
                settings.catalogs_dir,
                catalogs,
                settings.egress,
                operator,
                catalog=catalog,
                server=server,
                tool=tool,
                accept_findings=accept_findings,
                reason=reason,
            )
        )
        rows = log.by_request(result.request_id) if result.request_id else []
    finally:
        log.close()
    for name, found in sorted(result.refused.items()):
        out.print(Text(f"refused {name}: {len(found)} finding(s); --accept-findings to pin it anyway"))
        for finding in found:
            out.print(Text(f"  {finding.kind} in {finding.field}: {finding.detail}"), soft_wrap=True)
    if not result.pinned:
        raise ConfigError("nothing pinned" + (" (every tool has findings)" if result.refused else ""))
    record = f"audit record {rows[0]['id']}" if rows else "audited"
    out.print(Text(f"pinned {len(result.pinned)} tool(s) in {result.path} by {operator.label} ({record})"))
    for name in result.pinned:
        out.print(Text(f"  {name}"))
    if result.refused:
        raise typer.Exit(1)


@catalog_app.command("drift")
def catalog_drift(catalog: CatalogOption = None, config: ConfigOption = None) -> None:
    """New, changed and removed upstream tools against their pins, with poisoning findings; exit 1 when any."""
    from mcp_gateway.federation.pinning import drift_reports

    settings = load_settings(config)
    catalogs = load_catalogs(settings.catalogs_dir, settings.egress)
    if catalog is not None and catalog not in catalogs.servers:
        raise ConfigError(f"--catalog: no catalog {catalog!r}")
    reports = anyio.run(drift_reports, settings.catalogs_dir, catalogs, settings.egress, catalog)
    for report in reports:
        where = f"{report.catalog}/{report.server}"
        if report.error is not None:
            out.print(Text(f"{where}: unreachable: {report.error}"), soft_wrap=True)
            continue
        if not report.any:
            out.print(Text(f"{where}: every tool matches its pin"))
            continue
        for name in report.drift.new:
            out.print(Text(f"{where}: new {report.server}.{name} (not pinned, not published)"))
        for name, lines in report.drift.changed.items():
            out.print(Text(f"{where}: changed {report.server}.{name} (not published until pinned again)"))
            for line in lines:
                out.print(Text(f"    {line}"), soft_wrap=True)
        for name in report.drift.removed:
            out.print(Text(f"{where}: removed {report.server}.{name}"))
        for name, found in report.findings.items():
            for finding in found:
                out.print(
                    Text(
                        f"{where}: finding in {report.server}.{name}: "
                        f"{finding.kind} in {finding.field}: {finding.detail}"
                    ),
                    soft_wrap=True,
                )
    raise typer.Exit(1 if any(report.any for report in reports) else 0)
