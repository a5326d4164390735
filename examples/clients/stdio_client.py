"""An agent framework's view: spawn the gateway over stdio with a token in the environment.

Usage: ``MCP_GATEWAY_TOKEN=$(mcp-gateway token issue -s alice -r support --catalog internal) \
python examples/clients/stdio_client.py``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters


async def main() -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_gateway", "serve", "--transport", "stdio"],
        # The child gets a minimal environment plus what is named here: pass the token and backend secrets.
        env={key: value for key, value in os.environ.items() if key.startswith(("MCP_GATEWAY_", "INVENTORY_"))},
    )
    async with Client(params) as client:
        for tool in (await client.list_tools()).tools:
            print(f"{tool.name}: {tool.description}")


if __name__ == "__main__":
    asyncio.run(main())
