"""Tool-definition pins: what each upstream tool was approved as, in a reviewable file under ``catalogs_dir``.

A pin is the SHA-256 of the tool's whole wire definition (every field the upstream sent in ``tools/list``,
``_meta``, icons and fields this gateway does not know included) in the canonical byte form of
:mod:`mcp_gateway.canonical`. ``catalogs/pins/<catalog>.json`` keeps, per server and tool, the digest and the
definition itself (written with ``\\u`` escapes for every non-ASCII character, so a zero-width or bidi control
is visible in review), and who pinned it. An entry whose definition does not hash to its digest is refused.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp_gateway.canonical import digest
from mcp_gateway.errors import ConfigError

__all__ = ["PINS_DIR", "Drift", "Pin", "Pins", "field_diff", "load_pins", "pins_path", "tool_digest", "write_pins"]

PINS_DIR = "pins"
_MAX_PIN_FILE = 16 * 1_048_576


def tool_digest(definition: Mapping[str, Any]) -> str:
    """The pin digest of one tool's wire definition.

    Raises:
        ValueError: the definition is not JSON (NaN, a lone surrogate).
    """
    return digest(dict(definition))


@dataclass(frozen=True, slots=True)
class Pin:
    """One approved upstream tool definition."""

    digest: str
    definition: Mapping[str, Any]
    detail: Mapping[str, Any] = field(default_factory=dict)  # who pinned it, when, accepted findings


@dataclass(frozen=True, slots=True)
class Pins:
    """A catalog's pins: server -> upstream tool name -> pin."""

    servers: Mapping[str, Mapping[str, Pin]] = field(default_factory=dict)

    def get(self, server: str, tool: str) -> Pin | None:
        return self.servers.get(server, {}).get(tool)


@dataclass(frozen=True, slots=True)
class Drift:
    """How one server's tools differ from their pins: names only in ``new`` and ``removed``."""

    new: tuple[str, ...] = ()
    changed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # tool -> readable field diff
    removed: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.new or self.changed or self.removed)


def pins_path(catalogs_dir: Path, catalog: str) -> Path:
    return catalogs_dir / PINS_DIR / f"{catalog}.json"


def load_pins(catalogs_dir: Path, catalog: str) -> Pins:
    """The pins of ``catalog`` (none when the file does not exist).

    Raises:
        ConfigError: the file is unreadable, not the pin format, or an entry's definition does not match its digest.
    """
    path = pins_path(catalogs_dir, catalog)
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_PIN_FILE + 1)
    except FileNotFoundError:
        return Pins()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if len(raw) > _MAX_PIN_FILE:
        raise ConfigError(f"{path}: larger than {_MAX_PIN_FILE} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from exc
    servers = data.get("servers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise ConfigError(f"{path}: expected an object with a `servers` object")
    return Pins({server: _server_pins(path, server, tools) for server, tools in servers.items()})


def _server_pins(path: Path, server: str, tools: Any) -> dict[str, Pin]:
    if not isinstance(tools, dict):
        raise ConfigError(f"{path}: servers.{server}: expected an object of tools")
    pins: dict[str, Pin] = {}
    for name, entry in tools.items():
        where = f"{path}: servers.{server}.{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("definition"), dict):
            raise ConfigError(f"{where}: expected {{digest, definition}}")
        definition = entry["definition"]
        if definition.get("name") != name:
            raise ConfigError(f"{where}: the definition names {definition.get('name')!r}")
        if entry.get("digest") != tool_digest(definition):
            raise ConfigError(f"{where}: the definition does not hash to its digest (edited by hand?)")
        detail = {key: value for key, value in entry.items() if key not in ("digest", "definition")}
        pins[name] = Pin(entry["digest"], definition, detail)
    return pins


def write_pins(catalogs_dir: Path, catalog: str, pins: Pins) -> Path:
    """Write ``catalog``'s pins atomically, sorted, one field a line: a file that diffs well in review."""
    path = pins_path(catalogs_dir, catalog)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "catalog": catalog,
        "servers": {
            server: {
                name: {"digest": pin.digest, "definition": dict(pin.definition), **dict(pin.detail)}
                for name, pin in sorted(tools.items())
            }
            for server, tools in sorted(pins.servers.items())
        },
    }
    text = json.dumps(body, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n"
    staged = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    staged.write_text(text, encoding="ascii")
    try:
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return path


def field_diff(old: Any, new: Any, where: str = "") -> list[str]:
    """A readable diff of two JSON values: one line per changed, added or removed path."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for key in sorted(set(old) | set(new)):
            path = f"{where}.{key}" if where else str(key)
            if key not in new:
                lines.append(f"{path}: removed (was {_short(old[key])})")
            elif key not in old:
                lines.append(f"{path}: added {_short(new[key])}")
            else:
                lines += field_diff(old[key], new[key], path)
        return lines
    if old == new and type(old) is type(new):
        return []
    return [f"{where or '(root)'}: {_short(old)} -> {_short(new)}"]


def _short(value: Any) -> str:
    # ASCII with escapes: a hidden character shows as \u200b, not as nothing.
    text = json.dumps(value, ensure_ascii=True, sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."
