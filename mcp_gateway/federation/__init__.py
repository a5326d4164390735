"""Federation: upstream MCP servers' tools re-published under the gateway's governance, pinned by digest.

``upstream`` keeps one session per upstream server; ``pins`` reads and writes the reviewed pin files;
``poisoning`` checks definitions for hidden instructions; ``registry`` decides what is published and audits
drift; ``merged`` lays the published tools over the loaded catalogs. The backend that calls them is
:mod:`mcp_gateway.backends.upstream`.
"""

from mcp_gateway.federation.merged import merged_catalogs
from mcp_gateway.federation.registry import DRIFT, REFUSED, Federation

__all__ = ["DRIFT", "REFUSED", "Federation", "merged_catalogs"]
