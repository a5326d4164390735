"""The federation: every catalog's upstream sessions, and the pinned tools they publish as ``<server>.<tool>``.

A tool is published only while its upstream is up and the wire definition it lists hashes to its pin
(:mod:`mcp_gateway.federation.pins`). One that is unpinned or drifted is not listed, so a call to it is
``unknown_tool`` like a name that does not exist; each drift is audited once (``catalog.drift``, with the
pinned and the new digest), not once per call or per re-listing. ``on_change`` runs whenever what is
published changes, so the gateway can tell connected clients (``notifications/tools/list_changed``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import mcp_types as types
from anyio.abc import TaskGroup
from pydantic import ValidationError

from mcp_gateway.audit.log import AuditEntry, AuditLog, new_request_id
from mcp_gateway.canonical import digest
from mcp_gateway.catalog import PARTNER_CATALOGS, TOOL_NAME, CatalogSet, ServerSpec, ToolSpec, UpstreamToolBackend
from mcp_gateway.config import EgressSettings
from mcp_gateway.dlp import Action
from mcp_gateway.errors import ConfigError
from mcp_gateway.federation.pins import PINS_DIR, Pins, load_pins, tool_digest
from mcp_gateway.federation.poisoning import findings, other_tools
from mcp_gateway.federation.upstream import UpstreamSession
from mcp_gateway.telemetry import current_trace_id

__all__ = ["DRIFT", "REFUSED", "Federation", "published_tool"]

logger = logging.getLogger(__name__)

DRIFT = "catalog.drift"
REFUSED = "upstream.refused"


def published_tool(catalog: str, server: str, raw: Mapping[str, Any], pinned: str) -> ToolSpec | None:
    """The catalog tool a pinned upstream definition becomes, or None if it cannot be one (a bad schema)."""
    name = f"{server}.{raw.get('name')}"
    schema = raw.get("inputSchema")
    if not TOOL_NAME.fullmatch(name) or not isinstance(schema, dict) or schema.get("type") != "object":
        return None
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
        output = raw.get("outputSchema")
        if output is not None:
            jsonschema.Draft202012Validator.check_schema(output)
        definition = types.Tool.model_validate({**raw, "name": name})
    except (jsonschema.SchemaError, ValidationError):
        return None
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    backend = UpstreamToolBackend(server=server, tool=str(raw["name"]), pinned_digest=pinned, output_schema=output)
    dlp: Action = "block" if catalog in PARTNER_CATALOGS else "flag"
    return ToolSpec(name, catalog, definition, backend, pinned, validator, dlp=dlp)


class Federation:
    """Holds the upstream sessions of every catalog and what they publish."""

    def __init__(self, catalogs_dir: Path, egress: EgressSettings, audit: AuditLog) -> None:
        self._catalogs_dir, self._egress, self._audit = catalogs_dir, egress, audit
        self.sessions: dict[tuple[str, str], UpstreamSession] = {}
        self._scopes: dict[tuple[str, str], anyio.CancelScope] = {}
        self._pins: dict[str, Pins] = {}
        self._published: dict[str, dict[str, ToolSpec]] = {}
        self._drifted: dict[tuple[str, str, str], str | None] = {}  # (catalog, server, tool) -> audited new digest
        self._local: dict[str, tuple[str, ...]] = {}  # each catalog's own tools, for the tool-reference check
        self._group: TaskGroup | None = None
        self.version = digest({})
        self.on_change: Callable[[], Awaitable[None]] | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self, group: TaskGroup, catalogs: CatalogSet) -> None:
        """Open a session per upstream (in the background: start-up never waits for, or fails on, an upstream)."""
        self._group = group
        await self.sync(catalogs)

    async def sync(self, catalogs: CatalogSet) -> None:
        """Follow a catalog reload: sessions for new or changed servers, none for removed ones."""
        wanted = {(catalog, name): spec for catalog, specs in catalogs.servers.items() for name, spec in specs.items()}
        for key, session in list(self.sessions.items()):
            if wanted.get(key) != session.spec:
                self._scopes.pop(key).cancel()
                del self.sessions[key]
        self._reload_pins(set(catalogs.servers))
        self._local = {catalog: tuple(tools) for catalog, tools in catalogs.catalogs.items()}
        if self._group is None:
            return
        for key, spec in wanted.items():
            if key not in self.sessions:
                self._open(self._group, key[0], spec)
        await self._republish()

    def _open(self, group: TaskGroup, catalog: str, spec: ServerSpec) -> None:
        session = UpstreamSession(catalog, spec, self._egress, self)
        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                await session.run()

        self.sessions[(catalog, spec.name)] = session
        self._scopes[(catalog, spec.name)] = scope
        group.start_soon(run)

    async def aclose(self) -> None:
        for scope in self._scopes.values():
            scope.cancel()
        self._scopes.clear()
        self.sessions.clear()

    def pins_fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        """Names, sizes and modification times of the pin files: cheap change detection (``catalog pin`` runs in
        another process)."""
        found = []
        for path in sorted((self._catalogs_dir / PINS_DIR).glob("*.json")):
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append((path.name, stat.st_size, stat.st_mtime_ns))
        return tuple(found)

    def session(self, catalog: str, server: str) -> UpstreamSession | None:
        return self.sessions.get((catalog, server))

    def status(self) -> dict[str, dict[str, Any]]:
        """Per upstream: its state, and the last error while it is not up (what readyz shows)."""
        return {
            f"{catalog}/{server}": {"state": session.state, "error": session.error, "restarts": session.restarts}
            for (catalog, server), session in sorted(self.sessions.items())
        }

    # -- what is published ----------------------------------------------------------------------------------

    def tools(self) -> Mapping[str, Mapping[str, ToolSpec]]:
        return self._published

    def _reload_pins(self, catalogs: set[str]) -> None:
        for catalog in catalogs:
            try:
                self._pins[catalog] = load_pins(self._catalogs_dir, catalog)
            except ConfigError as exc:
                # Fail closed: pins that cannot be trusted pin nothing.
                logger.error("pins refused, no upstream tool of %s is published: %s", catalog, exc)
                self._pins[catalog] = Pins()

    async def tools_changed(self, session: UpstreamSession) -> None:
        """A session came up, went down or re-listed its tools."""
        self._reload_pins({session.catalog})
        await self._republish()

    async def refused(self, session: UpstreamSession, method: str) -> None:
        """The upstream asked the gateway for something it never grants (sampling, elicitation, roots)."""
        detail = {"server": session.name, "method": method}
        await self._record(REFUSED, session.catalog, f"{session.name}.*", "deny", "refused", detail)

    async def _republish(self) -> None:
        published: dict[str, dict[str, ToolSpec]] = {}
        for (catalog, server), session in sorted(self.sessions.items()):
            tools = published.setdefault(catalog, {})
            listed = [str(raw.get("name")) for raw in session.tools or ()]
            others = other_tools(server, listed, self._local.get(catalog, ()))
            for raw in session.tools or ():
                if not isinstance(raw.get("name"), str) or not session.spec.imports(raw["name"]):
                    continue
                spec = await self._check(catalog, server, raw, others)
                if spec is not None:
                    tools[spec.name] = spec
            if session.tools is not None:
                await self._check_removed(catalog, server, {str(raw.get("name")) for raw in session.tools})
        version = digest(
            {catalog: {name: spec.digest for name, spec in tools.items()} for catalog, tools in published.items()}
        )
        self._published = published
        if version != self.version:
            self.version = version
            if self.on_change is not None:
                await self.on_change()

    async def _check(
        self, catalog: str, server: str, raw: Mapping[str, Any], others: frozenset[str] = frozenset()
    ) -> ToolSpec | None:
        name = str(raw["name"])
        try:
            current = tool_digest(raw)
        except ValueError:
            return None
        pin = self._pins.get(catalog, Pins()).get(server, name)
        if pin is not None and pin.digest == current:
            self._drifted.pop((catalog, server, name), None)
            return published_tool(catalog, server, raw, current)
        neighbours = others - {name, f"{server}.{name}"}
        await self._drift(catalog, server, name, pin.digest if pin else None, current, raw, neighbours)
        return None

    async def _check_removed(self, catalog: str, server: str, listed: set[str]) -> None:
        pinned = self._pins.get(catalog, Pins()).servers.get(server, {})
        for name, pin in pinned.items():
            if name not in listed:
                await self._drift(catalog, server, name, pin.digest, None, None)

    async def _drift(
        self,
        catalog: str,
        server: str,
        name: str,
        old: str | None,
        new: str | None,
        raw: Mapping[str, Any] | None,
        others: frozenset[str] = frozenset(),
    ) -> None:
        key = (catalog, server, name)
        if key in self._drifted and self._drifted[key] == new:
            return  # audited once
        self._drifted[key] = new
        kind = "new" if old is None else "removed" if new is None else "changed"
        found = [dataclasses.asdict(finding) for finding in findings(raw, others)] if raw is not None else []
        detail = {"server": server, "kind": kind, "old_digest": old, "new_digest": new, "findings": found}
        logger.warning("upstream tool %s.%s of %s is %s: not published until pinned", server, name, catalog, kind)
        await self._record(DRIFT, catalog, f"{server}.{name}", "deny", kind, detail)

    async def _record(
        self, event: str, catalog: str, tool: str, decision: str, outcome: str, detail: dict[str, Any]
    ) -> None:
        entry = AuditEntry(
            event=event,
            decision=decision,
            outcome=outcome,
            request_id=new_request_id(),
            trace_id=current_trace_id(),
            subject="gateway",
            catalog=catalog,
            tool=tool,
            detail=detail,
        )
        try:
            await self._audit.append(entry)
        except Exception as exc:  # noqa: BLE001 - an audit outage must not take the upstream session down
            logger.error("could not audit %s for %s: %s", event, tool, exc)
