"""Backends: where an authorised call goes. Each kind of tool is one module here.

The core knows backends only through :class:`Backend`; a catalog tool's ``backend.type`` picks one from the
:class:`Backends` registry. A new kind of tool (an upstream MCP server, say) is a new module implementing the
protocol and one more entry in the registry that ``server.py`` builds: the core does not change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import mcp_types as types

from mcp_gateway.errors import UnavailableError

if TYPE_CHECKING:
    from mcp_gateway.catalog import ToolSpec
    from mcp_gateway.inventory import Inventory

__all__ = ["Answer", "Backend", "BackendCall", "Backends", "ProgressFn"]

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
"""``(progress, total, message)``: sends one progress notification to the caller."""


@dataclass(frozen=True, slots=True)
class BackendCall:
    """What a backend is told about the call besides the tool and its (validated, scanned) arguments."""

    request_id: str
    # The approved-model inventory of the catalog snapshot the call was decided under: a reload mid-call does not
    # change which models may answer it.
    inventory: Inventory
    # Set only when the caller asked for progress notifications (a model answer then streams).
    progress: ProgressFn | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """A backend's result, and what the audit row records about how it was produced (never a secret)."""

    result: types.CallToolResult
    detail: Mapping[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """One kind of tool backend. Implementations hold their clients and are built once per process."""

    async def call(self, tool: ToolSpec, arguments: Mapping[str, Any], call: BackendCall) -> Answer:
        """Make the tool's request.

        Raises:
            CallError: a subclass naming what failed (``UpstreamError``, ``UnavailableError``, ...).
        """
        ...

    def describe(self, tool: ToolSpec) -> dict[str, Any]:
        """What the audit trail says about the tool's backend: the template or model, never a filled-in request."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class Backends:
    """The registry: one backend per ``backend.type``, each built on first use (a model client is dear to import)."""

    def __init__(self, factories: Mapping[str, Callable[[], Backend]]) -> None:
        self._factories = dict(factories)
        self._built: dict[str, Backend] = {}

    def use(self, kind: str, backend: Backend) -> None:
        """Serve ``kind`` with an already built backend (the benchmark's in-process echo, a test's double)."""
        self._factories[kind] = lambda: backend
        self._built[kind] = backend

    def __getitem__(self, kind: str) -> Backend:
        built = self._built.get(kind)
        if built is None:
            factory = self._factories.get(kind)
            if factory is None:
                # The catalog loader accepts only known types; a tool without a backend fails closed.
                raise UnavailableError(f"no backend is configured for {kind!r} tools")
            built = self._built[kind] = factory()
        return built

    def built(self, kind: str) -> Backend | None:
        """The backend serving ``kind`` if one has been built (health pages: nothing is built to be looked at)."""
        return self._built.get(kind)

    def for_tool(self, tool: ToolSpec) -> Backend:
        """The backend serving ``tool``.

        Raises:
            UnavailableError: no backend of the tool's type is configured.
        """
        return self[tool.backend.type]

    async def aclose(self) -> None:
        """Close every backend that was built."""
        built, self._built = self._built, {}
        for backend in built.values():
            await backend.aclose()
