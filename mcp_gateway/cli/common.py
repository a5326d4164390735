"""What every command group shares: the two consoles, the ``--config`` option and the one error printer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from mcp_gateway.config import Settings, load_settings
from mcp_gateway.errors import ConfigError

__all__ = ["ConfigOption", "err", "fail", "out", "settings_from"]

out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $MCP_GATEWAY_CONFIG or mcp-gateway.yaml)."),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``.

    Raises:
        typer.Exit: always.
    """
    # Messages quote config values and paths: never let them be read as markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_from(config: Path | None) -> Settings:
    """The settings from ``config`` (or its default); a bad configuration ends the command with status 2."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        fail(str(exc))
