"""``mcp-gateway sbom``: the CycloneDX bill of materials of the environment this command runs in.

Run it with the gateway's own interpreter (the installed ``mcp-gateway``), since what it lists is what that
interpreter can import. ``--wheelhouse`` adds each wheel's sha256 from the offline bundle it was installed from.
It reads only installed metadata and the wheel files: no configuration, no token, no network.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mcp_gateway.cli.common import err

__all__ = ["sbom"]


def sbom(
    wheelhouse: Annotated[
        Path | None,
        typer.Option("--wheelhouse", help="The bundle the environment was installed from: adds each wheel's sha256."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the JSON here (default: standard output).")
    ] = None,
) -> None:
    """A CycloneDX 1.6 SBOM (JSON) of the installed distributions: name, version, purl, licences, wheel hashes."""
    from mcp_gateway.sbom import build_sbom, render_sbom

    bom = build_sbom(wheelhouse)
    text = render_sbom(bom)
    if output is None:
        sys.stdout.write(text)
        return
    _write_atomically(output, text)
    count = len(bom.components) + 1
    err.print(f"wrote {escape(str(output))}: {count} components", highlight=False, soft_wrap=True)


def _write_atomically(path: Path, text: str) -> None:
    # A reader (or an interrupted run) never sees half a document under the final name.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
