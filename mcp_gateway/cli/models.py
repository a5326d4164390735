"""``mcp-gateway models list | verify | import``: the approved-model inventory and the weights it pins.

Weights arrive by hand (no download at run time): ``import`` copies a file into the artifact folder only if its
SHA-256 matches both the release record and the inventory; ``verify`` re-hashes what is there. ``import``
changes what the gateway can serve: it runs as the verified operator of ``--token-file`` (a role in
``admin.policy_roles``) and is an audit record (``models.import``) with the digest it verified; ``list`` and
``verify`` read only and need no token.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.cli.common import ConfigOption, TokenFileOption, err, out, print_error
from mcp_gateway.config import Settings, load_settings
from mcp_gateway.errors import ConfigError
from mcp_gateway.inventory import (
    INVENTORY_FILE,
    Inventory,
    ModelEntry,
    load_inventory,
    verify_weights,
)

__all__ = ["models_app"]

models_app = typer.Typer(help="The approved-model inventory (catalogs/models.yaml).", no_args_is_help=True)


def _inventory(config: Path | None) -> Inventory:
    return _load(load_settings(config))


def _load(settings: Settings) -> Inventory:
    return load_inventory(settings.catalogs_dir / INVENTORY_FILE, settings.egress)


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err)


@models_app.command("list")
def models_list(config: ConfigOption = None) -> None:
    """Every model in the inventory: endpoint, version, owner, approval and the catalogs that may use it."""
    inventory = _inventory(config)
    table = Table("name", "provider", "served model", "version", "owner", "approved", "catalogs", "cap", "fallback")
    for entry in inventory.entries.values():
        cells = (
            entry.name,
            entry.provider,
            entry.served_model,
            entry.version,
            entry.owner,
            "yes" if entry.approved else "no",
            ", ".join(entry.catalogs),
            str(entry.max_tokens),
            entry.fallback or "",
        )
        table.add_row(*(Text(cell) for cell in cells))
    out.print(table)


@models_app.command("verify")
def models_verify(config: ConfigOption = None) -> None:
    """Hash each weights file and compare it with the inventory's sha256; exit 1 on a mismatch or missing file."""
    inventory = _inventory(config)
    with _bar() as bar:

        def progress(entry: ModelEntry, path: Path) -> Callable[[int], None]:
            task = bar.add_task(entry.name, total=path.stat().st_size)
            return lambda advance: bar.advance(task, advance)

        checks = verify_weights(inventory, progress)
    bad = False
    for check in checks:
        bad |= check.status in ("mismatch", "missing")
        out.print(Text(f"{check.name}: {check.status}" + (f" ({check.path})" if check.path else "")))
    raise typer.Exit(1 if bad else 0)


@models_app.command("import")
def models_import(
    file: Annotated[Path, typer.Argument(help="The weights file brought in by hand.", exists=True, dir_okay=False)],
    name: Annotated[str, typer.Option("--name", help="The inventory entry it belongs to.")],
    sha256: Annotated[str, typer.Option("--sha256", help="The expected SHA-256, from the release record.")],
    token_file: TokenFileOption = None,
    config: ConfigOption = None,
) -> None:
    """Copy weights into the artifact folder, only if their SHA-256 matches (and matches the inventory's)."""
    # Lazy: changes.py brings the policy engine; list and verify need none of it.
    from mcp_gateway.changes import import_model_weights
    from mcp_gateway.operators import operator_for

    settings = load_settings(config)
    operator = operator_for(settings, "policy", "models import", token_file)
    inventory = _load(settings)
    log = AuditLog(settings.database_url)
    try:
        with _bar() as bar:
            task = bar.add_task(name, total=file.stat().st_size)
            placed = import_model_weights(
                log, inventory, name, file, sha256, operator, lambda done: bar.advance(task, done)
            )
    except (ConfigError, OSError) as exc:
        # A refused import is the command's verdict on the file, as a mismatch is for `models verify`: exit 1
        # (never 2, whatever import_weights calls it), with nothing placed; it is on record either way.
        print_error(str(exc) if isinstance(exc, ConfigError) else f"models import: {exc}")
        raise typer.Exit(1) from exc
    finally:
        log.close()
    out.print(Text(f"imported {name} -> {placed} by {operator.label} (sha256 {sha256.lower()})"))
