"""The ``mcp-gateway`` command line: one module per command group, mounted by :mod:`mcp_gateway.cli.app`."""

from mcp_gateway.cli.app import main

__all__ = ["main"]
