"""The console's HTML: Jinja2 templates shipped in the package, every value escaped, no script anywhere.

Pages are rendered on the server and work without JavaScript; the Content-Security-Policy below forbids any
script, inline style, frame or foreign origin, so text that reached the trail from a caller (a tool name, a
subject, an argument) renders as text whatever it contains.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.responses import HTMLResponse, Response

__all__ = ["SECURITY_HEADERS", "asset", "page", "utc"]

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: under it Chromium sends "Origin: null" with a form's POST, which the origin checks refuse.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def utc(moment: float | str | None) -> str:
    """A time for people: ``2026-12-04 10:15:02 UTC`` (the zone always named)."""
    if moment is None or moment == "":
        return ""
    if isinstance(moment, str):
        return moment.replace("T", " ").split(".")[0].removesuffix("Z").removesuffix("+00:00") + " UTC"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


_ENVIRONMENT = Environment(
    loader=PackageLoader("mcp_gateway.console", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENVIRONMENT.filters["utc"] = utc


def page(template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> Response:
    """``template`` rendered with ``context``, with the console's security headers."""
    body = _ENVIRONMENT.get_template(template).render(**context)
    return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def asset(name: str) -> Response:
    """A static file shipped in the package (the stylesheet); 404 for anything else."""
    if name != "console.css":
        return Response("not found", status_code=404, headers=SECURITY_HEADERS)
    body = (resources.files("mcp_gateway.console") / "static" / name).read_bytes()
    headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"}
    return Response(body, media_type="text/css", headers=headers)
