"""stdio: one client per process, its token from the environment or a file, verified on every request.

Each line the client sends is checked (``wire.refusal``) before the SDK parses it: a message naming a member
twice is answered with a JSON-RPC error and never handed on. So that the SDK does not read stdin itself, the
gateway takes the client's stdin over as the SDK would (fd 0 reads the null device while serving).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import IO, Protocol

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

from mcp_gateway.audit.checkpoint import Checkpointer
from mcp_gateway.errors import UnauthenticatedError
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import JwtVerifier, Principal
from mcp_gateway.jose import UNKNOWN_KEY
from mcp_gateway.transports.background import checkpointing, federating, reloading
from mcp_gateway.transports.handlers import Authenticator, PrincipalSource, build_server, freeze_startup_heap
from mcp_gateway.transports.wire import refusal

__all__ = ["TOKEN_ENV", "TOKEN_FILE_ENV", "serve", "stdio_authenticator", "stdio_principal"]

logger = logging.getLogger(__name__)

TOKEN_ENV = "MCP_GATEWAY_TOKEN"  # noqa: S105 - a variable name, not a secret
TOKEN_FILE_ENV = "MCP_GATEWAY_TOKEN_FILE"  # noqa: S105 - a variable name, not a secret
# Reasons of stdio's own (the verifier's are in mcp_gateway.jose): no token given, or the token file unreadable.
NO_TOKEN = "no token"  # noqa: S105 - a reason, not a secret
UNREADABLE = "unreadable"


def stdio_principal(verifier: JwtVerifier, environ: Mapping[str, str] = os.environ) -> PrincipalSource:
    """A principal source for stdio: the token from ``MCP_GATEWAY_TOKEN`` or the file named by
    ``MCP_GATEWAY_TOKEN_FILE`` (re-read each time, so a rotated file takes effect), verified on every request.

    The client only sees "no valid token"; the operator running the process gets one line on stderr per refusal
    naming where the token was expected and why it failed (``UnauthenticatedError.reason``), never the token.
    """

    def current() -> Principal:
        token, source = _token(environ)
        try:
            return verifier.verify(token)
        except UnauthenticatedError as exc:
            _report(source, exc)
            raise

    return current


def stdio_authenticator(verifier: JwtVerifier, environ: Mapping[str, str] = os.environ) -> Authenticator:
    """:func:`stdio_principal` for serving: a token naming a kid the keys lack is verified once more after the
    JWKS is re-read (at most once per ``identity.jwks_min_refresh``, one read for every waiting request), exactly
    as over HTTP, so an IdP's rotation is picked up on its first token; only the final answer is reported."""

    async def authenticate() -> Principal:
        token, source = _token(environ)
        try:
            try:
                return verifier.verify(token)
            except UnauthenticatedError as refused:
                if refused.reason != UNKNOWN_KEY or not await verifier.keyring.refresh_for_unknown_kid():
                    raise
                return verifier.verify(token)
        except UnauthenticatedError as exc:
            _report(source, exc)
            raise

    return authenticate


def _token(environ: Mapping[str, str]) -> tuple[str, str]:
    """The caller's token and where it came from; a missing or unreadable one is refused (and reported)."""
    token = environ.get(TOKEN_ENV)
    token_file = environ.get(TOKEN_FILE_ENV)
    source = TOKEN_ENV
    try:
        if not token and token_file:
            source = f"{TOKEN_FILE_ENV} ({token_file})"
            try:
                token = Path(token_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                detail = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise UnauthenticatedError(f"cannot read {token_file}: {detail}", reason=UNREADABLE) from exc
            if not token:
                raise UnauthenticatedError(f"{token_file} is empty", reason=NO_TOKEN)
        if not token:
            source = f"{TOKEN_ENV} or {TOKEN_FILE_ENV}"
            raise UnauthenticatedError(f"no token: set {TOKEN_ENV} or {TOKEN_FILE_ENV}", reason=NO_TOKEN)
    except UnauthenticatedError as exc:
        _report(source, exc)
        raise
    return token, source


def _report(source: str, exc: UnauthenticatedError) -> None:
    print(f"mcp-gateway: request refused: {source}: {exc.reason}: {exc}", file=sys.stderr, flush=True)


class _CheckedLines(anyio.AsyncFile[str]):
    """The client's lines, each checked before the SDK parses it; the refused ones become errors to answer."""

    def __init__(self, fp: IO[str], refusals: MemoryObjectSendStream[types.JSONRPCError]) -> None:
        super().__init__(fp)
        self._refusals = refusals

    async def __aiter__(self) -> AsyncIterator[str]:
        async for line in super().__aiter__():
            error = refusal(line) if line.strip() else None
            if error is None:
                yield line
                continue
            logger.warning("refused a stdio message before parsing: %s", error.error.message)
            await self._refusals.send(error)


@contextlib.contextmanager
def _client_stdin() -> Iterator[IO[str]]:
    """The client's stdin on a private descriptor, fd 0 pointed at the null device while serving (as the SDK
    does when it reads stdin itself), so that nothing else in the process can consume the client's bytes."""
    wire = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        # closefd=False and never closed: a worker thread may still block reading it when serving ends.
        yield io.TextIOWrapper(os.fdopen(wire, "rb", closefd=False), encoding="utf-8", errors="replace")
    finally:
        os.dup2(wire, 0)


class _Sender(Protocol):
    async def send(self, item: SessionMessage, /) -> None: ...


async def _answer(refusals: MemoryObjectReceiveStream[types.JSONRPCError], write_stream: _Sender) -> None:
    # The server closes its write stream when the client leaves; a refusal still queued then has nobody to read it.
    with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
        async for error in refusals:
            await write_stream.send(SessionMessage(error))


async def serve(gateway: Gateway, verifier: JwtVerifier, checkpointer: Checkpointer | None) -> None:
    """Serve one client over stdin/stdout until it disconnects."""
    server = build_server(gateway, stdio_principal(verifier), stdio_authenticator(verifier))
    freeze_startup_heap()
    refusals_in, refusals_out = anyio.create_memory_object_stream[types.JSONRPCError](16)
    with _client_stdin() as stdin:
        async with (
            stdio_server(stdin=_CheckedLines(stdin, refusals_in)) as (read_stream, write_stream),
            reloading(gateway),
            federating(gateway),
            checkpointing(checkpointer, gateway.settings.audit.checkpoint_interval),
            verifier.keyring.running(),
            anyio.create_task_group() as group,
        ):
            group.start_soon(_answer, refusals_out, write_stream)
            await server.run(read_stream, write_stream, server.create_initialization_options())
            group.cancel_scope.cancel()
