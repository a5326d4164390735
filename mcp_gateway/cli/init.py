"""``mcp-gateway init DIR``: scaffold a deployment and say what to do next."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mcp_gateway.cli.common import out

__all__ = ["init"]

_NEXT_STEPS = """\
[bold]Next steps[/]
  1. Check it:           mcp-gateway config check --config {config}
  2. Your IdP:           set identity.issuer and identity.audience, and put the IdP's public keys in
                         identity.jwks_file (or identity.jwks_url, listed under egress.allow). The development
                         key in {state} is for trying it out only.
  3. Your tools:         edit {root}/catalogs/internal.yaml and partner.yaml; every backend origin goes on
                         egress.allow. Who may call what: {root}/policies/*.csv (`mcp-gateway policy lint`).
  4. A development token:
                         mcp-gateway token issue --config {config} -s alice -r support --catalog internal
  5. Connect a client:   over stdio, MCP_GATEWAY_TOKEN=<token> mcp-gateway serve --config {config}
                         over HTTP,  mcp-gateway serve --config {config} --transport streamable-http
                         (then http://127.0.0.1:8080/mcp with Authorization: Bearer <token>)
"""


def init(
    directory: Annotated[
        Path, typer.Argument(help="The new deployment's folder; created if missing, never overwritten.")
    ],
) -> None:
    """Scaffold a deployment: commented config, two catalogs, the policy model and a starter policy, a dev key."""
    from mcp_gateway.scaffold import scaffold

    made = scaffold(directory)
    for path in made.files:
        out.print(f"wrote {escape(str(path))}", soft_wrap=True)
    out.print(
        f"wrote {escape(str(made.dev_key.key_path))} and {escape(str(made.dev_key.jwks_path))} (development key)",
        soft_wrap=True,
    )
    out.print(
        _NEXT_STEPS.format(
            config=escape(str(made.config)),
            root=escape(str(directory)),
            state=escape(str(made.dev_key.key_path.parent)),
        ),
        highlight=False,
        soft_wrap=True,
    )
