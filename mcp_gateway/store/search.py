"""Searching the audit trail page by page, newest first, with work bounded per page whatever the filter.

The trail has no index but its primary key, on purpose: each index costs every call a page write at commit (see
docs/architecture.md). A filter that matches nothing would then scan the whole trail for one page. So a page
walks the key backwards in windows of ``window`` ids and stops when the page is full or its time ``budget`` is
spent; the cursor it returns says where the next page starts, and a page that stopped early says how many ids
it looked at. Each page is a bounded read whatever the trail's size: keyset pagination, never OFFSET.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, select
from sqlalchemy.sql.elements import ColumnElement

from mcp_gateway.store.tables import RECORD_TABLE as _RECORDS

__all__ = ["AuditSearch", "Page", "SearchFilter"]

_FILTERED = ("subject", "tool", "decision", "outcome", "catalog", "event")


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """What a search keeps: every field set must match exactly; ``rule`` matches the rule's file:line prefix."""

    since: str | None = None  # ISO-8601 UTC, inclusive
    until: str | None = None  # ISO-8601 UTC, exclusive
    subject: str | None = None
    tool: str | None = None
    decision: str | None = None
    outcome: str | None = None
    catalog: str | None = None
    event: str | None = None
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of rows, newest first, and where the next page starts (``None``: the trail's start reached)."""

    rows: tuple[dict[str, Any], ...]
    next_before: int | None
    scanned: int


class AuditSearch:
    """Keyset-paginated search over the trail behind ``engine``."""

    def __init__(self, engine: Engine, *, window: int = 20_000, budget: float = 0.12) -> None:
        self._engine = engine
        self._window = window
        self._budget = budget

    def _conditions(self, wanted: SearchFilter) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        for name in _FILTERED:
            value = getattr(wanted, name)
            if value is not None:
                conditions.append(_RECORDS.c[name] == value)
        if wanted.since is not None:
            conditions.append(_RECORDS.c.ts >= wanted.since)
        if wanted.until is not None:
            conditions.append(_RECORDS.c.ts < wanted.until)
        if wanted.rule is not None:
            # "internal.csv:3" matches the stored "internal.csv:3 p, role:..." and nothing longer ("...:30").
            prefix = wanted.rule.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append((_RECORDS.c.rule == wanted.rule) | _RECORDS.c.rule.like(f"{prefix} %", escape="\\"))
        return conditions

    def page(self, wanted: SearchFilter, *, before: int | None = None, limit: int = 50) -> Page:
        """The newest ``limit`` rows matching ``wanted`` with an id below ``before`` (all ids when ``None``)."""
        with self._engine.connect() as connection:
            top = before
            if top is None:
                last = connection.execute(select(_RECORDS.c.id).order_by(_RECORDS.c.id.desc()).limit(1)).scalar()
                top = int(last or 0) + 1
            conditions = self._conditions(wanted)
            rows: list[dict[str, Any]] = []
            scanned = 0
            deadline = time.perf_counter() + self._budget
            # At least one window, however slow the machine: a page always moves the cursor.
            while top > 1 and len(rows) < limit and (scanned == 0 or time.perf_counter() < deadline):
                low = max(1, top - self._window)
                query = (
                    select(_RECORDS)
                    .where(and_(_RECORDS.c.id >= low, _RECORDS.c.id < top, *conditions))
                    .order_by(_RECORDS.c.id.desc())
                    .limit(limit - len(rows))
                )
                found = [dict(row) for row in connection.execute(query).mappings()]
                rows += found
                scanned += top - low
                top = low if len(rows) < limit else int(found[-1]["id"])
        return Page(tuple(rows), top if top > 1 else None, scanned)
