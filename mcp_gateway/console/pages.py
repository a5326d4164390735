"""The console's read pages: access, changes, audit search (and its export), one call's story, health."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from mcp_gateway.console import views
from mcp_gateway.console.render import SECURITY_HEADERS, page
from mcp_gateway.console.session import Session
from mcp_gateway.store.search import SearchFilter

if TYPE_CHECKING:
    from mcp_gateway.console.app import Console

__all__ = ["page_routes"]

_FILTER_FIELDS = ("since", "until", "subject", "tool", "decision", "outcome", "catalog", "event", "rule")
_MAX_FILTER_CHARS = 256
_EXPORT_PAGE = 1000
_EXPORT_MAX_ROWS = 1_000_000


def _filter(request: Request) -> SearchFilter:
    values = {}
    for name in _FILTER_FIELDS:
        value = request.query_params.get(name, "").strip()[:_MAX_FILTER_CHARS]
        values[name] = value or None
    return SearchFilter(**values)


def _before(request: Request) -> int | None:
    raw = request.query_params.get("before", "")
    return int(raw) if raw.isdigit() and 0 < len(raw) < 19 else None


def page_routes(console: Console) -> list[Route]:
    """The read pages, each behind the console's guard."""

    def render(template: str, session: Session, **context: Any) -> Response:
        return page(template, console=console, session=session, **context)

    async def access(request: Request, session: Session) -> Response:
        asked = {name: request.query_params.get(name) or None for name in ("catalog", "tool", "subject")}
        rows = await anyio.to_thread.run_sync(lambda: views.access_rows(console.gateway, **asked))
        issues = await anyio.to_thread.run_sync(views.lint_issues, console.gateway)
        tools = sorted({(row.catalog, row.tool) for row in rows})
        subjects = sorted({row.subject for row in rows})
        cells = {(row.catalog, row.subject, row.tool): row for row in rows}
        return render(
            "access.html", session, asked=asked, tools=tools, subjects=subjects, cells=cells, issues=issues, rows=rows
        )

    async def changes(request: Request, session: Session) -> Response:
        found = await anyio.to_thread.run_sync(lambda: views.change_rows(console.gateway, _before(request)))
        rows = [(row, views.detail_of(row)) for row, _ in found]
        return render("changes.html", session, rows=rows)

    async def audit(request: Request, session: Session) -> Response:
        wanted = _filter(request)
        found = await anyio.to_thread.run_sync(lambda: views.search_page(console.gateway, wanted, _before(request)))
        query = {name: getattr(wanted, name) for name in _FILTER_FIELDS if getattr(wanted, name)}
        return render("audit.html", session, page=found, wanted=wanted, query=query)

    async def export(request: Request, session: Session) -> Response:
        wanted = _filter(request)

        async def lines() -> AsyncIterator[bytes]:
            before: int | None = None
            sent = 0
            while sent < _EXPORT_MAX_ROWS:
                found = await anyio.to_thread.run_sync(views.search_page, console.gateway, wanted, before, _EXPORT_PAGE)
                for row in found.rows:
                    yield (json.dumps(row, sort_keys=True, default=str) + "\n").encode()
                sent += len(found.rows)
                if found.next_before is None:
                    return
                before = found.next_before

        headers = {**SECURITY_HEADERS, "Content-Disposition": 'attachment; filename="audit.jsonl"'}
        return StreamingResponse(lines(), media_type="application/x-ndjson", headers=headers)

    async def call(request: Request, session: Session) -> Response:
        request_id = str(request.path_params["request_id"])[:_MAX_FILTER_CHARS]
        rows = await anyio.to_thread.run_sync(views.story_rows, console.gateway, request_id)
        if not rows:
            return console.refusal(request, session, 404, "No call with this request id is on record.")
        story = [(row, views.detail_of(row)) for row in rows]
        return render("call.html", session, request_id=request_id, story=story)

    async def health(request: Request, session: Session) -> Response:
        rows = await anyio.to_thread.run_sync(views.health_rows, console.gateway)
        return render("health.html", session, rows=rows)

    return [
        Route("/access", console.guard(access), methods=["GET"]),
        Route("/changes", console.guard(changes), methods=["GET"]),
        Route("/audit", console.guard(audit), methods=["GET"]),
        Route("/audit/export", console.guard(export), methods=["GET"]),
        Route("/calls/{request_id}", console.guard(call), methods=["GET"]),
        Route("/health", console.guard(health), methods=["GET"]),
    ]
