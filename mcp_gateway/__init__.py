"""mcp-gateway: a governed MCP gateway for regulated, air-gapped organisations."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
