"""``catalog pin`` and ``catalog drift``: what the upstreams say now, against what is pinned.

Both ask each upstream for its tools over a session of their own (opened and closed here: the serving
gateway's sessions live in another process). ``pin`` writes the pin file and is a chain record
(``catalog.pin``) with the verified operator as actor, committed before the file is replaced; a tool with
poisoning findings is refused unless the operator accepts them, and the acceptance is in that record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.catalog import CatalogSet, ServerSpec
from mcp_gateway.changes import change_entry
from mcp_gateway.config import EgressSettings
from mcp_gateway.errors import ConfigError, UnavailableError
from mcp_gateway.federation.pins import Drift, Pin, Pins, field_diff, load_pins, tool_digest, write_pins
from mcp_gateway.federation.poisoning import Finding, findings, other_tools
from mcp_gateway.federation.upstream import UpstreamSession
from mcp_gateway.operators import Operator

__all__ = ["PIN", "PinResult", "ServerReport", "drift_reports", "list_upstream", "pin_tools"]

PIN = "catalog.pin"


@dataclass(frozen=True, slots=True)
class ServerReport:
    """One server's tools now, against its pins."""

    catalog: str
    server: str
    drift: Drift = field(default_factory=Drift)
    findings: Mapping[str, tuple[Finding, ...]] = field(default_factory=dict)  # new or changed tool -> findings
    error: str | None = None  # the server could not be reached

    @property
    def any(self) -> bool:
        return self.drift.any or bool(self.findings) or self.error is not None


@dataclass(frozen=True, slots=True)
class PinResult:
    pinned: tuple[str, ...]
    refused: Mapping[str, tuple[Finding, ...]]
    path: Path | None
    request_id: str | None


async def list_upstream(catalog: str, spec: ServerSpec, egress: EgressSettings) -> tuple[dict[str, Any], ...]:
    """The raw tool definitions ``spec`` lists now (only those the catalog imports).

    Raises:
        UnavailableError: the server could not be reached or listed within its timeout.
    """
    session = UpstreamSession(catalog, spec, egress, _Quiet())
    try:
        tools = await session.snapshot()
    except Exception as exc:
        raise UnavailableError(f"{catalog}/{spec.name}: {type(exc).__name__}: {exc}") from exc
    return tuple(tool for tool in tools if isinstance(tool.get("name"), str) and spec.imports(tool["name"]))


class _Quiet:
    async def tools_changed(self, session: UpstreamSession) -> None:
        return None

    async def refused(self, session: UpstreamSession, method: str) -> None:
        return None


def _servers(catalogs: CatalogSet, catalog: str, server: str | None) -> list[ServerSpec]:
    specs = catalogs.servers.get(catalog)
    if specs is None:
        raise ConfigError(f"--catalog: no catalog {catalog!r}")
    if server is not None and server not in specs:
        raise ConfigError(f"--server: catalog {catalog!r} has no server {server!r}")
    return [spec for name, spec in specs.items() if server is None or name == server]


def compare(
    catalog: str,
    server: str,
    pinned: Mapping[str, Pin],
    listed: tuple[dict[str, Any], ...],
    neighbours: Collection[str] = (),
) -> ServerReport:
    """New, changed (with a field diff) and removed tools, and the findings of the new and changed ones.

    ``neighbours`` are the names of the catalog's other tools, for the tool-reference check.
    """
    now = {str(tool["name"]): tool for tool in listed}
    others = other_tools(server, now, neighbours)
    new = tuple(sorted(name for name in now if name not in pinned))
    changed = {
        name: tuple(field_diff(dict(pinned[name].definition), tool))
        for name, tool in sorted(now.items())
        if name in pinned and pinned[name].digest != tool_digest(tool)
    }
    removed = tuple(sorted(name for name in pinned if name not in now))
    found = {name: tuple(findings(now[name], others - {name, f"{server}.{name}"})) for name in (*new, *changed)}
    return ServerReport(catalog, server, Drift(new, changed, removed), {k: v for k, v in found.items() if v})


async def drift_reports(
    catalogs_dir: Path, catalogs: CatalogSet, egress: EgressSettings, catalog: str | None
) -> list[ServerReport]:
    """One report per server of ``catalog`` (every catalog when None). Read-only."""
    reports: list[ServerReport] = []
    for name in sorted(catalogs.servers) if catalog is None else [catalog]:
        pins = load_pins(catalogs_dir, name)
        for spec in _servers(catalogs, name, None):
            try:
                listed = await list_upstream(name, spec, egress)
            except UnavailableError as exc:
                reports.append(ServerReport(name, spec.name, error=str(exc)))
                continue
            local = tuple(catalogs.catalogs.get(name, {}))
            reports.append(compare(name, spec.name, pins.servers.get(spec.name, {}), listed, local))
    return reports


async def pin_tools(
    log: AuditLog,
    catalogs_dir: Path,
    catalogs: CatalogSet,
    egress: EgressSettings,
    operator: Operator,
    *,
    catalog: str,
    server: str | None = None,
    tool: str | None = None,
    accept_findings: bool = False,
    reason: str | None = None,
) -> PinResult:
    """Pin what the upstreams of ``catalog`` list now (one server or tool when given); audited.

    Raises:
        ConfigError: unknown catalog, server or tool, or the pin file does not load.
        UnavailableError: a server could not be reached (nothing is pinned), or the record could not be written.
    """
    pins = load_pins(catalogs_dir, catalog)
    servers = {name: dict(tools) for name, tools in pins.servers.items()}
    pinned: list[str] = []
    refused: dict[str, tuple[Finding, ...]] = {}
    accepted: dict[str, list[dict[str, str]]] = {}
    when = datetime.now(UTC).isoformat(timespec="seconds")
    for spec in _servers(catalogs, catalog, server):
        listed = await list_upstream(catalog, spec, egress)
        chosen = [raw for raw in listed if tool is None or raw["name"] == tool]
        others = other_tools(spec.name, [str(raw["name"]) for raw in listed], catalogs.catalogs.get(catalog, {}))
        if tool is not None and not chosen:
            raise ConfigError(f"--tool: {catalog}/{spec.name} lists no tool {tool!r}")
        for raw in chosen:
            full = f"{spec.name}.{raw['name']}"
            found = tuple(findings(raw, others - {raw["name"], full}))
            if found and not accept_findings:
                refused[full] = found
                continue
            detail: dict[str, Any] = {"pinned_by": operator.sub, "pinned_at": when}
            if found:
                accepted[full] = [dataclasses.asdict(item) for item in found]
                detail["accepted_findings"] = accepted[full]
            servers.setdefault(spec.name, {})[str(raw["name"])] = Pin(tool_digest(raw), raw, detail)
            pinned.append(full)
    if not pinned:
        return PinResult((), refused, None, None)
    entry = change_entry(
        PIN,
        operator,
        ok=True,
        detail={
            "catalog": catalog,
            "tools": {name: servers[name.split(".", 1)[0]][name.split(".", 1)[1]].digest for name in pinned},
            "accepted_findings": accepted,
            "refused": sorted(refused),
            "reason": reason,
        },
    )
    log.record(entry)  # the record first: a pin that cannot be audited is not made
    path = await anyio.to_thread.run_sync(write_pins, catalogs_dir, catalog, Pins(servers))
    return PinResult(tuple(pinned), refused, path, entry.request_id)
