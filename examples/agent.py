"""An example agent: connects to the gateway as one caller, lists its tools and makes two calls.

Usage: ``python examples/agent.py --url http://127.0.0.1:8080/mcp --token "$TOKEN" --call crm.customer_lookup
'{"customer_id": "c-100"}'``. The demo imports :func:`run_agent` to run it once per caller.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError


@dataclass
class CallOutcome:
    tool: str
    ok: bool
    text: str
    error: dict[str, Any] | None = None


@dataclass
class AgentReport:
    tools: list[str] = field(default_factory=list)
    calls: list[CallOutcome] = field(default_factory=list)


async def run_agent(url: str, token: str, calls: list[tuple[str, dict[str, Any]]]) -> AgentReport:
    """List tools and make each call over streamable HTTP; errors are collected, not raised."""
    report = AgentReport()
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        listed = await client.list_tools()
        report.tools = [tool.name for tool in listed.tools]
        for name, arguments in calls:
            try:
                result = await client.call_tool(name, arguments)
            except MCPError as exc:
                report.calls.append(
                    CallOutcome(name, False, exc.message, {"jsonrpc_code": exc.code, **(exc.data or {})})
                )
                continue
            text = "".join(getattr(block, "text", "") for block in result.content)
            error = (result.structured_content or {}).get("error") if result.is_error else None
            report.calls.append(CallOutcome(name, not result.is_error, text, error))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080/mcp")
    parser.add_argument("--token", required=True)
    parser.add_argument("--call", nargs=2, action="append", default=[], metavar=("TOOL", "JSON_ARGS"))
    args = parser.parse_args()
    calls = [(tool, json.loads(arguments)) for tool, arguments in args.call]
    report = asyncio.run(run_agent(args.url, args.token, calls))
    print(json.dumps({"tools": report.tools, "calls": [vars(call) for call in report.calls]}, indent=2))


if __name__ == "__main__":
    main()
