"""The servers the benchmarks compare, each run as its own process bound to 127.0.0.1.

``python -m bench.servers bare --transport stdio|http [--port P] [--tools N] [--rest-url URL]``
    A bare ``mcp`` low-level ``Server`` with an ``echo`` tool (and ``N - 1`` inert tools for the listing
    benchmark): no identity, no policy, no audit. The baseline. With ``--rest-url`` its echo calls the REST
    echo API with httpx, as the gateway's REST backend does.
``python -m bench.servers governed --config PATH --transport stdio|http [--echo local|rest]``
    The gateway exactly as ``mcp-gateway serve`` wires it (identity, catalog, policy, argument limits, the
    audit trail, trace ids, the reload loop), except that with ``--echo local`` the catalog's backend is
    answered in-process without I/O, like the bare server's echo. ``--echo rest`` (the default) uses the real
    REST backend. ``--audit decision-off|off`` are diagnostics that take audit rows out to measure their cost.
``python -m bench.servers echo-api --port P``
    The in-boundary REST endpoint ``POST /echo`` the ``rest`` variants call.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcp_gateway.backends import Answer

ECHO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"message": {"type": "string", "maxLength": 4096}},
    "required": ["message"],
    "additionalProperties": False,
}


def echo_result(arguments: Mapping[str, Any] | None) -> types.CallToolResult:
    """What both sides answer to ``echo``: the message back as text."""
    return types.CallToolResult(content=[types.TextContent(text=str((arguments or {}).get("message", "")))])


def filler_tool(index: int) -> types.Tool:
    """One of the inert tools that pad a catalog to a realistic size."""
    return types.Tool(
        name=f"svc{index % 50}.op{index}",
        description=f"Filler tool {index} for the listing benchmark.",
        input_schema={"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
    )


def bare_server(tools: int = 1, rest_url: str | None = None) -> Server[Any]:
    """The baseline: the SDK's low-level server, configured as well as it can be, with no governance.

    With ``rest_url`` the echo makes the same REST call the gateway's backend makes, with one reused client.
    """
    client = httpx.AsyncClient(trust_env=False) if rest_url else None
    listing = [types.Tool(name="echo", description="Echo the message back.", input_schema=ECHO_SCHEMA)]
    listing += [filler_tool(index) for index in range(1, tools)]
    schemas = {tool.name: tool.input_schema for tool in listing}

    async def on_list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=listing)

    async def on_call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        if params.name != "echo":
            raise ValueError(params.name)
        if client is not None:
            response = await client.post(f"{rest_url}/echo", json=params.arguments or {})
            response.raise_for_status()
            return echo_result(response.json())
        return echo_result(params.arguments)

    # Like the gateway, give the SDK the schemas so 2026-07-28 mode does not re-run tools/list per call.
    return Server(
        "bare-echo",
        version="1",
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
        get_tool_input_schema=schemas.get,
    )


class LocalEcho:
    """Stands in for ``HttpUpstream``: answers the echo tool in-process, as the bare server does."""

    async def call(self, tool: Any, arguments: Mapping[str, Any], call: Any) -> Answer:
        return Answer(echo_result(arguments))

    def describe(self, tool: Any) -> dict[str, Any]:
        # What the REST backend would record for the same tool, so rows keep their size.
        return {"type": "http", "method": tool.backend.method, "url": tool.backend.url}

    async def aclose(self) -> None:
        return None


def _governed(config: str, transport: str, echo: str, audit: str) -> None:
    """Serve with the production entry point (``run_http`` / ``serve_stdio``), the echo backend swapped in."""
    # Imported here so the bare server's memory figure does not include the gateway's modules.
    import mcp_gateway.server as server_module
    from mcp_gateway.config import load_settings

    build_gateway = server_module.build_gateway

    def build(settings: Any, metrics: Any = None) -> Any:
        gateway = build_gateway(settings, metrics)
        if echo == "local":
            gateway.backends.use("http", LocalEcho())
        install_diagnostic_audit(gateway, audit)
        return gateway

    server_module.build_gateway = build
    settings = load_settings(config)
    anyio.run(server_module.serve_stdio if transport == "stdio" else server_module.run_http, settings)


class _FilteredAudit:
    """Passes through to the real trail, dropping the rows ``keep`` refuses."""

    def __init__(self, inner: Any, keep: Any) -> None:
        self._inner = inner
        self._keep = keep

    def record(self, entry: Any) -> str:
        return str(self._inner.record(entry)) if self._keep(entry) else ""

    async def append(self, entry: Any) -> str:
        return str(await self._inner.append(entry)) if self._keep(entry) else ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def install_diagnostic_audit(gateway: Any, audit: str) -> None:
    """DIAGNOSTICS ONLY, never a deployment option: take audit rows out to measure what they cost.

    ``decision-off`` drops the decision row committed before the backend (one row per call instead of two);
    ``off`` drops every row. Both break the gateway's fail-closed guarantees.
    """
    if audit == "off":
        gateway.audit = _FilteredAudit(gateway.audit, lambda entry: False)
    elif audit == "decision-off":
        gateway.audit = _FilteredAudit(gateway.audit, lambda entry: entry.outcome != "started")


def _serve(app: Any, port: int) -> None:
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def echo_api() -> Starlette:
    """The in-boundary REST echo: ``POST /echo {"message": ...}`` answers the same JSON."""

    async def echo(request: Request) -> Response:
        body = await request.body()
        message = json.loads(body).get("message", "")
        return Response(json.dumps({"message": message}), media_type="application/json")

    async def health(request: Request) -> Response:
        return Response("ok")

    return Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/healthz", health)])


def _bare_http_app(tools: int, rest_url: str | None) -> Starlette:
    app = bare_server(tools, rest_url).streamable_http_app()

    async def health(request: Request) -> Response:
        return Response("ok")

    app.router.routes.append(Route("/healthz", health))
    return app


def main() -> None:
    """Serve until stopped; with ``BENCH_PROFILE=FILE`` in the environment, under pyinstrument, writing FILE."""
    target = os.environ.get("BENCH_PROFILE")
    if not target:
        _main()
        return
    from pyinstrument import Profiler  # the `bench` extra

    profiler = Profiler(interval=0.0002, async_mode="disabled")

    def write(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        profiler.stop()
        Path(target).write_text(
            profiler.output_text(unicode=False, show_all=os.environ.get("BENCH_PROFILE_ALL") == "1")
        )
        os._exit(0)  # the client stops stdio servers with a signal; write before the loop unwinds

    signal.signal(signal.SIGTERM, write)
    profiler.start()
    _main()
    write()


def _main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark servers (127.0.0.1 only).")
    parser.add_argument("kind", choices=("bare", "governed", "echo-api"))
    parser.add_argument("--transport", choices=("stdio", "http"), default="http")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tools", type=int, default=1)
    parser.add_argument("--config")
    parser.add_argument("--echo", choices=("local", "rest"), default="rest")
    parser.add_argument("--audit", choices=("full", "decision-off", "off"), default="full", help="diagnostics only")
    parser.add_argument("--rest-url", help="bare only: echo through this REST echo API")
    args = parser.parse_args()
    if args.kind == "echo-api":
        _serve(echo_api(), args.port)
    elif args.kind == "bare" and args.transport == "stdio":
        server = bare_server(args.tools, args.rest_url)

        async def run() -> None:
            async with stdio_server() as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())

        anyio.run(run)
    elif args.kind == "bare":
        _serve(_bare_http_app(args.tools, args.rest_url), args.port)
    else:
        _governed(args.config, args.transport, args.echo, args.audit)


if __name__ == "__main__":
    main()
