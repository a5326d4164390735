"""Connect to the gateway over legacy SSE with the `mcp` client (for clients that predate streamable HTTP).

Usage: ``python examples/clients/sse_client.py --token "$TOKEN"`` against ``mcp-gateway serve --transport sse``.
"""

from __future__ import annotations

import argparse
import asyncio

from mcp.client import Client
from mcp.client.sse import sse_client


async def main(url: str, token: str) -> None:
    async with Client(sse_client(url, headers={"Authorization": f"Bearer {token}"}), read_timeout_seconds=30) as client:
        for tool in (await client.list_tools()).tools:
            print(f"{tool.name}: {tool.description}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080/sse")
    parser.add_argument("--token", required=True)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.url, arguments.token))
