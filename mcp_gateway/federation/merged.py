"""The catalogs a call is decided under: the loaded catalogs with the federation's published tools laid over."""

from __future__ import annotations

from collections.abc import Mapping

from mcp_gateway.canonical import digest
from mcp_gateway.catalog import CatalogSet, ToolSpec

__all__ = ["merged_catalogs"]


def merged_catalogs(base: CatalogSet, published: Mapping[str, Mapping[str, ToolSpec]], version: str) -> CatalogSet:
    """``base`` plus each catalog's published upstream tools (a catalog's own tool of the same name wins)."""
    catalogs = {name: dict(tools) for name, tools in base.catalogs.items()}
    for catalog, tools in published.items():
        if catalog in catalogs:
            own = catalogs[catalog]
            catalogs[catalog] = {**own, **{name: spec for name, spec in tools.items() if name not in own}}
    return CatalogSet(
        catalogs=catalogs,
        version=digest({"catalogs": base.version, "federated": version}),
        models=base.models,
        servers=base.servers,
    )
