"""``mcp-gateway serve``, ``config check`` and ``token issue``: run the gateway, check what it would run on,
and mint a development token to call it with."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated
from urllib.parse import urlsplit

import anyio
import typer
from rich.markup import escape

from mcp_gateway.catalog import load_catalogs
from mcp_gateway.cli.common import ConfigOption, err, out
from mcp_gateway.config import Settings, load_settings
from mcp_gateway.errors import ConfigError
from mcp_gateway.policy import load_policy
from mcp_gateway.transports.tls import tls_context

__all__ = ["config_app", "serve", "token_app"]

config_app = typer.Typer(help="Validate configuration.", no_args_is_help=True)
token_app = typer.Typer(help="Development tokens (never for production).", no_args_is_help=True)


class Transport(StrEnum):
    stdio = "stdio"
    sse = "sse"
    streamable_http = "streamable-http"


def serve(
    config: ConfigOption = None,
    transport: Annotated[Transport, typer.Option(help="stdio, or HTTP serving both /mcp and /sse.")] = Transport.stdio,
    host: Annotated[str | None, typer.Option(help="Override http.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override http.port.")] = None,
) -> None:
    """Serve MCP over stdio, or over HTTP (streamable HTTP at /mcp and SSE at /sse on one app)."""
    # The server module brings in the SDK's server side, Starlette and the HTTP clients (some 250 modules):
    # imported when serving, so that every other command starts without them.
    from mcp_gateway import server

    settings = load_settings(config)
    if host is not None or port is not None:
        http = settings.http.model_copy(update={k: v for k, v in (("host", host), ("port", port)) if v is not None})
        settings = settings.model_copy(update={"http": http})
    if transport is Transport.stdio:
        anyio.run(server.serve_stdio, settings)
    else:
        scheme = "https" if settings.http.tls else "http"
        err.print(f"mcp-gateway on {scheme}://{settings.http.host}:{settings.http.port} (/mcp, /sse)")
        anyio.run(server.run_http, settings)


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate settings, keys, catalogs and policies without starting a server."""
    # Lazy for the same reason as in serve; build_verifier belongs below the server module, which is the wiring.
    from mcp_gateway.server import build_verifier

    settings = load_settings(config)
    _warn_about_allowlist(settings)
    build_verifier(settings)
    tls_context(settings.http)
    catalogs = load_catalogs(settings.catalogs_dir, settings.egress)
    policy = load_policy(settings.policies_dir)
    for name, tools in catalogs.names().items():
        out.print(f"catalog [bold]{name}[/]: {len(tools)} tools")
    approved = sum(entry.approved for entry in catalogs.models.entries.values())
    out.print(f"models: {len(catalogs.models.entries)} in the inventory, {approved} approved")
    out.print(f"policy: {len(policy.rules)} rules, {len(policy.groupings)} groupings, version {policy.version[:12]}")
    out.print("[green]configuration OK[/]")


class ReferenceName(StrEnum):
    config = "config"
    catalog = "catalog"
    inventory = "inventory"


@config_app.command("reference")
def config_reference(
    what: Annotated[
        ReferenceName, typer.Argument(help="config (mcp-gateway.yaml), catalog (catalogs/*.yaml) or inventory.")
    ] = ReferenceName.config,
) -> None:
    """Print the reference of a file format (every key, type, default and meaning) as Markdown."""
    from mcp_gateway.reference import REFERENCES, render

    reference = next(item for item in REFERENCES if item.name == what.value)
    typer.echo(render(reference), nl=False)


def _warn_about_allowlist(settings: Settings) -> None:
    """Warn about allowlist entries naming an address the guard refuses when a name resolves to it (link-local,
    metadata, unspecified...): written as a literal, such an entry is connected to as written."""
    from mcp_gateway.egress.addresses import literal_refusal

    for entry in settings.egress.allow:
        reason = literal_refusal(urlsplit(entry).hostname or "")
        if reason is not None:
            message = f"egress.allow {entry}: {reason}"
            err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


@token_app.command("issue")
def token_issue(
    subject: Annotated[str, typer.Option("--subject", "-s", help="The `sub` claim.")],
    catalog: Annotated[str, typer.Option(help="internal or partner.")],
    role: Annotated[list[str] | None, typer.Option("--role", "-r", help="A role; repeat for more.")] = None,
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds, at most identity.max_token_lifetime.")] = 300,
    amr: Annotated[list[str] | None, typer.Option(help="Authentication method; repeat for more.")] = None,
    config: ConfigOption = None,
) -> None:
    """Mint a short-lived token with the local development key (created on first use). Development only."""
    from mcp_gateway.devkeys import ensure_dev_key

    if catalog not in ("internal", "partner"):
        raise ConfigError(f"--catalog must be internal or partner, not {catalog!r}")
    settings = load_settings(config)
    cap = settings.identity.max_token_lifetime
    if not 0 < ttl <= cap:
        # The gateway refuses a longer token on every call; better not to mint one that only looks usable.
        raise ConfigError(f"--ttl must be between 1 and identity.max_token_lifetime ({cap} s), not {ttl}")
    key = ensure_dev_key(settings.state_dir)
    token = key.mint(
        subject,
        roles=tuple(role or ()),
        catalog=catalog,
        issuer=settings.identity.issuer,
        audience=settings.identity.audience,
        ttl=ttl,
        amr=tuple(amr or ()),
    )
    err.print("[yellow]development token: signed by a local key, never use in production[/]")
    print(token)
