"""Connected clients that listed tools, so each can be told when what it may see changes.

Keyed weakly by the transport's connection object: a client that goes away is forgotten with its connection.
Only a client whose own visible list changed is sent ``notifications/tools/list_changed``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from mcp_gateway.identity import Principal

__all__ = ["ToolWatchers"]

logger = logging.getLogger(__name__)

_MAX_WATCHERS = 10_000


class ToolWatchers:
    """Who listed which tools; ``send(connection)`` delivers the notification to one of them."""

    def __init__(self, send: Callable[[Any], Awaitable[None]]) -> None:
        self._send = send
        self._seen: weakref.WeakKeyDictionary[Any, tuple[Principal, tuple[str, ...]]] = weakref.WeakKeyDictionary()

    def watch(self, connection: Any, principal: Principal, names: tuple[str, ...]) -> None:
        if len(self._seen) >= _MAX_WATCHERS and connection not in self._seen:
            return
        try:
            self._seen[connection] = (principal, names)
        except TypeError:  # a connection that cannot be referenced weakly is not watched
            return

    async def changed(self, visible: Callable[[Principal], tuple[str, ...]]) -> int:
        """Notify every watcher whose visible tools differ from what it last listed; returns how many."""
        sent = 0
        for connection, (principal, names) in list(self._seen.items()):
            now = visible(principal)
            if now == names:
                continue
            self._seen[connection] = (principal, now)
            try:
                await self._send(connection)
                sent += 1
            except Exception as exc:  # noqa: BLE001 - a client that went away is simply forgotten
                logger.debug("list_changed not delivered: %s", exc)
                self._seen.pop(connection, None)
        return sent
