"""The ``mcp-gateway`` command: serve, check, and read the evidence.

Every command takes ``--config PATH`` (default ``mcp-gateway.yaml`` or ``$MCP_GATEWAY_CONFIG``). A bad
configuration exits with status 2 and names the key and why; any other refusal exits with 1. Each command
group lives in its own module; this one only mounts them, on a root group that maps errors to exit statuses.
"""

from __future__ import annotations

import typer

from mcp_gateway.cli.audit import audit_app
from mcp_gateway.cli.breakglass import approval_app, breakglass_app
from mcp_gateway.cli.catalog import catalog_app
from mcp_gateway.cli.common import ErrorMappingGroup
from mcp_gateway.cli.doctor import doctor
from mcp_gateway.cli.init import init
from mcp_gateway.cli.models import models_app
from mcp_gateway.cli.policy import policy_app
from mcp_gateway.cli.sbom import sbom
from mcp_gateway.cli.serve import config_app, serve, token_app

__all__ = ["app", "main"]

app = typer.Typer(
    cls=ErrorMappingGroup, help="A governed MCP gateway.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.command()(serve)
app.command()(init)
app.command()(sbom)
app.command()(doctor)
app.add_typer(config_app, name="config")
app.add_typer(token_app, name="token")
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")
app.add_typer(breakglass_app, name="breakglass")
app.add_typer(approval_app, name="approval")
app.add_typer(models_app, name="models")
app.add_typer(catalog_app, name="catalog")


def main() -> None:
    app()
