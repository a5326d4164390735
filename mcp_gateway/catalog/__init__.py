"""Tool catalogs: which tools exist, for which audience, and how each one reaches its backend.

``loader`` reads ``catalogs/<name>.yaml`` into an immutable :class:`CatalogSet` of :class:`ToolSpec`\\ s;
``specs`` holds the backend part of a tool (REST request template, model call). A leaf of the package: it
imports no backend, audit or transport module.
"""

from mcp_gateway.catalog.loader import (
    CATALOG_NAME,
    PARTNER_CATALOGS,
    RESERVED_FILES,
    TOOL_NAME,
    CatalogSet,
    ToolSpec,
    catalog_fingerprint,
    load_catalogs,
)
from mcp_gateway.catalog.servers import SERVER_NAME, ServerSpec, UpstreamToolBackend
from mcp_gateway.catalog.specs import MODEL_PARAMETERS, HttpBackend, ModelBackend

__all__ = [
    "CATALOG_NAME",
    "MODEL_PARAMETERS",
    "PARTNER_CATALOGS",
    "RESERVED_FILES",
    "SERVER_NAME",
    "TOOL_NAME",
    "CatalogSet",
    "HttpBackend",
    "ModelBackend",
    "ServerSpec",
    "ToolSpec",
    "UpstreamToolBackend",
    "catalog_fingerprint",
    "load_catalogs",
]
