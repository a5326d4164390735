"""``mcp-gateway init DIR``: a deployment to start from, written from the templates shipped in the package.

The templates (``mcp_gateway/templates/init/``) are a commented configuration, an internal and a partner catalog
with one example tool each, the Casbin model and a starter policy, and an empty model inventory; a development
signing key is made in the new deployment's state folder. Nothing that exists is overwritten: if any file the
scaffold would write is already there, nothing is written at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from mcp_gateway.devkeys import DevKey, ensure_dev_key
from mcp_gateway.errors import ConfigError

__all__ = ["STATE_DIR", "Scaffold", "scaffold", "template_files"]

STATE_DIR = "state"  # as the template configuration's state_dir says


@dataclass(frozen=True, slots=True)
class Scaffold:
    """What :func:`scaffold` wrote."""

    root: Path
    files: tuple[Path, ...]
    dev_key: DevKey

    @property
    def config(self) -> Path:
        return self.root / "mcp-gateway.yaml"


def template_files() -> dict[str, bytes]:
    """Every template, by its path relative to the new deployment's folder (``catalogs/internal.yaml``, ...)."""
    found: dict[str, bytes] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif not entry.name.startswith("."):
                found[f"{prefix}{entry.name}"] = entry.read_bytes()

    walk(resources.files("mcp_gateway") / "templates" / "init", "")
    return found


def scaffold(root: Path) -> Scaffold:
    """Write a new deployment into ``root`` (created if missing).

    Raises:
        ConfigError: a file the scaffold would write exists already (nothing is written then), or the folder
            cannot be written.
    """
    templates = template_files()
    targets = {root / name: content for name, content in sorted(templates.items())}
    state = root / STATE_DIR
    existing = [path for path in (*targets, state) if path.exists()]
    if existing:
        names = ", ".join(str(path) for path in existing)
        raise ConfigError(f"{root}: not overwriting what is there ({names}); choose an empty or new folder")
    written: list[Path] = []
    try:
        for path, content in targets.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            # "x": a file that appeared since the check above is not overwritten either.
            with path.open("xb") as handle:
                handle.write(content)
            written.append(path)
        dev_key = ensure_dev_key(state)
    except OSError as exc:
        raise ConfigError(f"{root}: cannot write the deployment: {exc.strerror or exc}") from exc
    return Scaffold(root=root, files=tuple(written), dev_key=dev_key)
