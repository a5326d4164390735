"""Field checks shared by the configuration's files (settings, catalogs, inventory): URL shapes, origins and
patterns. A leaf: it imports nothing of the package, so every file model can use it."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

__all__ = ["absolute_http_url", "checked_origins", "origin_in", "origin_of", "pattern_check"]


def pattern_check(pattern: re.Pattern[str], message: str) -> Callable[[str | None], str | None]:
    """A field validator: the value (when set) must match ``pattern`` whole, else ``message``."""

    def check(value: str | None) -> str | None:
        if value is not None and not pattern.fullmatch(value):
            raise ValueError(message)
        return value

    return check


def absolute_http_url(value: str) -> SplitResult:
    """The parts of an absolute http(s) URL with a host.

    Raises:
        ValueError: it is not one.
    """
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    return parts


def origin_of(url: str) -> str:
    """Normalise a URL to its origin, ``scheme://host:port`` with the default port made explicit.

    Raises:
        ValueError: not an http(s) URL, or one carrying credentials (``user:pass@``), which would be sent.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"URL carries credentials: {parts.scheme}://...@{parts.hostname}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host.lower()}:{port}"


def checked_origins(value: tuple[str, ...]) -> tuple[str, ...]:
    """Each entry checked to be an origin (scheme://host:port, nothing more) and normalised by ``origin_of``."""
    for entry in value:
        parts = urlsplit(entry)
        if parts.username is not None or parts.password is not None:
            # Named without the credentials: error messages end up in logs.
            raise ValueError(f"{parts.scheme}://...@{parts.hostname}: an origin carries no credentials")
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"{entry!r} is not an origin like http://127.0.0.1:8081")
        if parts.query or parts.fragment:
            raise ValueError(f"{entry!r}: an origin carries no query or fragment")
    return tuple(origin_of(entry) for entry in value)


def origin_in(url: str, origins: frozenset[str] | tuple[str, ...]) -> bool:
    """Whether ``url``'s origin is one of ``origins`` (normalised by :func:`origin_of`); not a URL is never in."""
    try:
        return origin_of(url) in origins
    except ValueError:
        return False
