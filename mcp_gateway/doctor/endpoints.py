"""Every endpoint the configuration names: on ``egress.allow``, and resolving only to addresses the guard allows.

The catalogs and the inventory are read as plain YAML here, not through their loaders: a loader stops at the
first URL off the allowlist, and the doctor must list every one of them. Whether the files load as a whole is
a row of its own.

Resolution goes through the guard's own ``AddressPinner``, so a name passes exactly when a connection to it
would be allowed: every address it resolves to is checked (metadata endpoints, unspecified, multicast,
link-local and reserved addresses are refused). A literal IP on the allowlist is connected to as written, so
the doctor applies the same judgement to it (``literal_refusal``) that ``config check`` warns about.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from mcp_gateway.config import Settings
from mcp_gateway.doctor.finding import Finding, Status
from mcp_gateway.egress.addresses import AddressPinner, AddressRefusedError, SyncResolver, literal_refusal
from mcp_gateway.errors import ConfigError
from mcp_gateway.fieldchecks import origin_of
from mcp_gateway.inventory import INVENTORY_FILE

__all__ = ["Endpoint", "configured_endpoints", "endpoint_checks"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A URL the gateway would connect to, and where the configuration names it."""

    where: str
    url: str


def _entries(data: Any, key: str) -> Iterator[tuple[int, dict[str, Any]]]:
    items = data.get(key) if isinstance(data, dict) else None
    for index, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, dict):
            yield index, item


def _catalog_endpoints(path: Path, data: Any) -> Iterator[Endpoint]:
    for index, tool in _entries(data, "tools"):
        backend = tool.get("backend")
        if isinstance(backend, dict) and backend.get("type", "http") == "http" and isinstance(backend.get("url"), str):
            yield Endpoint(f"{path.name} tools.{index} ({tool.get('name', '?')})", backend["url"])
    for index, server in _entries(data, "servers"):
        if isinstance(server.get("url"), str):
            yield Endpoint(f"{path.name} servers.{index} ({server.get('name', '?')})", server["url"])


def _file_endpoints(catalogs_dir: Path) -> tuple[list[Endpoint], list[Finding]]:
    endpoints: list[Endpoint] = []
    unreadable: list[Finding] = []
    for path in sorted(catalogs_dir.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_bytes())
        except (OSError, yaml.YAMLError) as exc:
            unreadable.append(Finding("endpoints", path.name, Status.FAIL, f"cannot read: {exc}"))
            continue
        if path.name == INVENTORY_FILE:
            endpoints += [
                Endpoint(f"{path.name} models.{index} ({model.get('name', '?')})", model["base_url"])
                for index, model in _entries(data, "models")
                if isinstance(model.get("base_url"), str)
            ]
        else:
            endpoints += _catalog_endpoints(path, data)
    return endpoints, unreadable


def configured_endpoints(settings: Settings) -> tuple[list[Endpoint], list[Finding]]:
    """Every endpoint in the settings, the catalogs (REST backends, upstream servers) and the inventory (model
    engines); and a failed finding per catalog file that cannot be read as YAML."""
    endpoints: list[Endpoint] = []
    identity = settings.identity
    if identity.jwks_url is not None:
        endpoints.append(Endpoint("identity.jwks_url", identity.jwks_url))
    if settings.telemetry.otlp_endpoint is not None:
        endpoints.append(Endpoint("telemetry.otlp_endpoint", settings.telemetry.otlp_endpoint))
    if settings.console.enabled and settings.console.oidc_client_id is not None:
        # The console's sign-in reads the issuer's discovery document and posts to its token endpoint.
        endpoints.append(Endpoint("identity.issuer (console sign-in)", identity.issuer))
    in_files, unreadable = _file_endpoints(settings.catalogs_dir)
    return endpoints + in_files, unreadable


def _endpoint_finding(settings: Settings, pinner: AddressPinner, endpoint: Endpoint) -> Finding:
    def verdict(status: Status, reason: str) -> Finding:
        return Finding("endpoint", f"{endpoint.where}: {endpoint.url}", status, reason)

    try:
        origin = origin_of(endpoint.url)
    except ValueError as exc:
        return verdict(Status.FAIL, str(exc))
    if not settings.egress.permits(endpoint.url):
        return verdict(Status.FAIL, f"{origin} is not on egress.allow")
    parts = urlsplit(origin)
    host, port = parts.hostname or "", parts.port or 0
    refusal = literal_refusal(host)
    if refusal is not None:
        return verdict(Status.FAIL, refusal)
    try:
        addresses = pinner.addresses_sync(host, port)
    except AddressRefusedError as exc:
        return verdict(Status.FAIL, str(exc))
    except ValueError as exc:  # the resolver's own refusal of a name (a label over 63 octets, a NUL)
        return verdict(Status.FAIL, f"cannot resolve {host!r}: {exc}")
    if addresses == [host.strip("[]")]:
        return verdict(Status.PASS, f"{origin} on egress.allow; a literal address, connected to as written")
    return verdict(Status.PASS, f"{origin} on egress.allow; resolves to {', '.join(addresses)}, all allowed")


def _unused_entries(settings: Settings, endpoints: list[Endpoint]) -> Iterator[Finding]:
    used = set()
    for endpoint in endpoints:
        try:
            used.add(origin_of(endpoint.url))
        except ValueError:
            continue
    for entry in settings.egress.allow:
        if entry not in used:
            yield Finding(
                "egress.allow", entry, Status.WARN, "no configured endpoint uses it: it widens the boundary for nothing"
            )


def _loads(settings: Settings) -> Finding:
    # Lazy: the catalog loader brings the backends' specs; nothing else here needs them.
    from mcp_gateway.catalog import load_catalogs

    try:
        catalogs = load_catalogs(settings.catalogs_dir, settings.egress)
    except ConfigError as exc:
        return Finding("catalogs", str(settings.catalogs_dir), Status.FAIL, f"do not load: {exc}")
    count = sum(len(tools) for tools in catalogs.names().values())
    loaded = f"load: {count} tools, {len(catalogs.names())} catalogs, {len(catalogs.models.entries)} models"
    return Finding("catalogs", str(settings.catalogs_dir), Status.PASS, loaded)


def endpoint_checks(settings: Settings, resolver: SyncResolver | None = None) -> list[Finding]:
    """One finding per configured endpoint, one per unused allowlist entry, and whether the catalogs load.

    ``resolver`` replaces the system resolver (tests: a name that resolves to a forbidden address).
    """
    endpoints, unreadable = configured_endpoints(settings)
    pinner = AddressPinner(settings.egress, sync_resolver=resolver)
    findings = [_endpoint_finding(settings, pinner, endpoint) for endpoint in endpoints]
    if not endpoints:
        findings.append(Finding("endpoint", "(none)", Status.PASS, "the configuration names no outbound endpoint"))
    return [*unreadable, _loads(settings), *findings, *_unused_entries(settings, endpoints)]
