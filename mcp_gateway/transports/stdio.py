"""stdio: one client per process, its token from the environment or a file, verified on every request."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from mcp.server.stdio import stdio_server

from mcp_gateway.audit.checkpoint import Checkpointer
from mcp_gateway.errors import UnauthenticatedError
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import JwtVerifier, Principal
from mcp_gateway.transports.background import checkpointing, reloading
from mcp_gateway.transports.handlers import PrincipalSource, build_server, freeze_startup_heap

__all__ = ["TOKEN_ENV", "TOKEN_FILE_ENV", "serve", "stdio_principal"]

TOKEN_ENV = "MCP_GATEWAY_TOKEN"  # noqa: S105 - a variable name, not a secret
TOKEN_FILE_ENV = "MCP_GATEWAY_TOKEN_FILE"  # noqa: S105 - a variable name, not a secret


def stdio_principal(verifier: JwtVerifier, environ: Mapping[str, str] = os.environ) -> PrincipalSource:
    """A principal source for stdio: the token from ``MCP_GATEWAY_TOKEN`` or the file named by
    ``MCP_GATEWAY_TOKEN_FILE`` (re-read each time, so a rotated file takes effect), verified on every request."""

    def current() -> Principal:
        token = environ.get(TOKEN_ENV)
        token_file = environ.get(TOKEN_FILE_ENV)
        if not token and token_file:
            try:
                token = Path(token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise UnauthenticatedError(f"{TOKEN_FILE_ENV}: cannot read {token_file}: {exc.strerror}") from exc
        if not token:
            raise UnauthenticatedError(f"no token: set {TOKEN_ENV} or {TOKEN_FILE_ENV}")
        return verifier.verify(token)

    return current


async def serve(gateway: Gateway, verifier: JwtVerifier, checkpointer: Checkpointer | None) -> None:
    """Serve one client over stdin/stdout until it disconnects."""
    server = build_server(gateway, stdio_principal(verifier))
    freeze_startup_heap()
    async with (
        stdio_server() as (read_stream, write_stream),
        reloading(gateway),
        checkpointing(checkpointer, gateway.settings.audit.checkpoint_interval),
    ):
        await server.run(read_stream, write_stream, server.create_initialization_options())
