"""What every command group shares: the two consoles, the ``--config`` and ``--token-file`` options, and the one
place where an error that ends a command becomes ``error: …`` on stderr and the error class's exit status."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from mcp_gateway.errors import GatewayError

__all__ = ["ConfigOption", "ErrorMappingGroup", "TokenFileOption", "err", "out", "print_error"]

out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $MCP_GATEWAY_CONFIG or mcp-gateway.yaml)."),
]

# The operator's own token, for commands that change state (mcp_gateway.operators); read-only commands take none.
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="Your own token from the identity provider (default: $MCP_GATEWAY_TOKEN or $MCP_GATEWAY_TOKEN_FILE).",
    ),
]


def print_error(message: str) -> None:
    """``error: message`` on stderr."""
    # Messages quote config values and paths: never let them be read as markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


class ErrorMappingGroup(TyperGroup):
    """The root command group: a :class:`GatewayError` that ends any command is printed and exits with the
    class's ``exit_code`` (2 for a :class:`ConfigError`, 1 otherwise), so no command picks a status by hand.

    Other exceptions propagate: a bug shows its traceback rather than a tidy message.
    """

    # Typer declares the parameter as its vendored click's Context, which it does not export; it always passes
    # a typer.Context, the public subclass.
    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except GatewayError as exc:
            print_error(str(exc))
            raise typer.Exit(exc.exit_code) from exc
