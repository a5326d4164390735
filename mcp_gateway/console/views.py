"""What the console's pages show, read from the gateway in force and its audit trail (no HTML here).

Every function is read-only and takes what it needs from a running :class:`Gateway`: the policy snapshot and
catalogs it enforces now, and the trail it writes to. The templates in ``templates/`` render the results.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp_gateway.policy.tools import ROLE_ONLY_SUBJECT, Issue, lint, subjects_of
from mcp_gateway.store.search import Page, SearchFilter

if TYPE_CHECKING:
    from mcp_gateway.gateway import Gateway

__all__ = [
    "CHANGE_EVENTS",
    "AccessRow",
    "HealthRow",
    "access_rows",
    "change_rows",
    "detail_of",
    "health_rows",
    "lint_issues",
    "search_page",
    "story_rows",
]

CHANGE_EVENTS = ("policy.reload", "policy.change", "catalog.reload")
_STORY_LIMIT = 200


@dataclass(frozen=True, slots=True)
class AccessRow:
    """One cell of the access matrix: may ``subject`` call ``tool`` in ``catalog``, and which rule says so."""

    catalog: str
    subject: str
    tool: str
    allowed: bool
    rule: str


@dataclass(frozen=True, slots=True)
class HealthRow:
    """One component's state on the health page."""

    component: str
    state: str
    ok: bool
    detail: str = ""


def access_rows(
    gateway: Gateway, *, catalog: str | None = None, tool: str | None = None, subject: str | None = None
) -> list[AccessRow]:
    """Every policy subject against every tool of every catalog (or those asked for), with the deciding rule."""
    snapshot = gateway.policy.snapshot
    rows: list[AccessRow] = []
    for name, tools in sorted(gateway.catalogs.names().items()):
        if catalog and name != catalog:
            continue
        for who in subjects_of(snapshot):
            if subject and who != subject:
                continue
            kind, _, value = who.partition(":")
            user, roles = (value, ()) if kind == "user" else (ROLE_ONLY_SUBJECT, (value,))
            for each in tools:
                if tool and each != tool:
                    continue
                decision = snapshot.decide(user, roles, name, each)
                rows.append(AccessRow(name, who, each, decision.allowed, decision.rule))
    return rows


def lint_issues(gateway: Gateway) -> list[Issue]:
    """The lint findings of the policy in force against the catalogs in force."""
    return lint(gateway.settings.policies_dir, gateway.catalogs)


def detail_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's ``detail`` as a mapping (stored as JSON text)."""
    raw = row.get("detail")
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        return {"unparsed": raw}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def search_page(gateway: Gateway, wanted: SearchFilter, before: int | None, limit: int = 50) -> Page:
    """One page of the trail matching ``wanted``, newest first."""
    return gateway.audit.search(wanted, before=before, limit=limit)


def change_rows(gateway: Gateway, before: int | None = None, limit: int = 50) -> list[tuple[dict[str, Any], Page]]:
    """The latest configuration changes (policy edits and reloads, catalog reloads), newest first."""
    pages = [search_page(gateway, SearchFilter(event=event), before, limit) for event in CHANGE_EVENTS]
    rows = sorted((row for page in pages for row in page.rows), key=lambda row: -int(row["id"]))[:limit]
    return [(row, pages[CHANGE_EVENTS.index(row["event"])]) for row in rows]


def story_rows(gateway: Gateway, request_id: str) -> list[dict[str, Any]]:
    """Every row of one call (listing, decision, outcome), in chain order."""
    return gateway.audit.by_request(request_id)[:_STORY_LIMIT]


def _model_health(gateway: Gateway) -> Iterator[HealthRow]:
    router = gateway.backends.built("model")
    states: dict[str, str] = getattr(router, "breaker_states", dict)()
    for name, entry in sorted(gateway.catalogs.models.entries.items()):
        state = states.get(name, "closed (no call yet)")
        usable = entry.approved and not state.startswith("open")
        yield HealthRow(f"model {name}", state, usable, f"{entry.provider} at {entry.base_url}")


def health_rows(gateway: Gateway) -> list[HealthRow]:
    """The audit writer, the last checkpoint, and each model endpoint's breaker. Blocking: off the event loop."""
    rows: list[HealthRow] = []
    reason = gateway.audit.writable()
    rows.append(HealthRow("audit writer", "ok" if reason is None else "unavailable", reason is None, reason or ""))
    checkpoints = gateway.audit.checkpoints()
    if checkpoints:
        last = checkpoints[-1]
        rows.append(HealthRow("last checkpoint", str(last["ts"]), True, f"record {last['record_id']}"))
    else:
        rows.append(HealthRow("last checkpoint", "none yet", False, "run `mcp-gateway audit checkpoint`"))
    rows.extend(_model_health(gateway))
    return rows
