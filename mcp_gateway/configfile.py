"""The gateway's own configuration on record: digested at start, and every later edit of the file recorded.

The start-up record (``gateway.start``) carries :func:`startup_detail`: the config file's path and SHA-256 as
read, and the effective settings (the file plus ``MCP_GATEWAY_*`` overrides), credentials redacted. Settings are
not reloaded while serving: an edited file takes effect at the next start. Until then the reload check records
each new version of the file once (``config.change``, outcome ``pending_restart``, or ``in_force`` when it is
back to what is running) with :func:`change_detail`: both digests, the redacted line diff, the keys that
changed, which of them govern identity, egress, telemetry or administration, and whether the new file would
load. So a change to the egress allowlist, the identity provider or telemetry is on record before it can act.

Redaction: values of credential-looking keys (``password``, ``*_secret``, ``*_token``, ``*_key``...), anything
nested under them, and passwords in URLs become ``[redacted]``; the digests still show that they changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mcp_gateway.config import Settings, load_settings
from mcp_gateway.errors import ConfigError
from mcp_gateway.provenance import REDACTED, FolderFiles, file_changes, redact_urls, redact_yaml_lines, secret_key

__all__ = ["WATCHED_SECTIONS", "ConfigFile", "change_detail", "redacted", "startup_detail"]

# Changed keys under these are named in ``security_keys``: who may call, where the gateway may connect, where
# its telemetry goes, who may administer it.
WATCHED_SECTIONS = ("identity", "egress", "telemetry", "admin", "breakglass", "http.allowed_origins", "audit")


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """The config file's path and bytes as read at one moment."""

    path: Path
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @classmethod
    def of(cls, settings: Settings) -> ConfigFile | None:
        """The file ``settings`` were loaded from, with the bytes load_settings read; None when built in code."""
        loaded = settings.loaded_from
        return None if loaded is None else cls(*loaded)

    def reread(self) -> ConfigFile:
        """The same path, read now.

        Raises:
            OSError: the file cannot be read.
        """
        return ConfigFile(self.path, self.path.read_bytes())


def redacted(value: Any) -> Any:
    """``value`` (parsed YAML or dumped settings) with credential-looking keys' values and URL passwords redacted."""
    if isinstance(value, dict):
        return {key: REDACTED if secret_key(str(key)) else redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(item) for item in value]
    if isinstance(value, str):
        return redact_urls(value)
    return value


def startup_detail(settings: Settings) -> dict[str, Any]:
    """What the start-up record says about the configuration in force: file, digest, effective settings."""
    source = ConfigFile.of(settings)
    return {
        "config_file": str(source.path) if source else None,
        "config_sha256": source.sha256 if source else None,
        "settings": redacted(settings.model_dump(mode="json")),
    }


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _parsed(data: bytes) -> dict[str, Any] | None:
    try:
        loaded = yaml.safe_load(data)
    except yaml.YAMLError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _watched(key: str) -> bool:
    return any(key == section or key.startswith(section + ".") for section in WATCHED_SECTIONS)


def change_detail(in_force: ConfigFile, current: ConfigFile, *, check: bool = True) -> dict[str, Any]:
    """The record of ``current`` against the file the gateway started with (``in_force``).

    ``check`` also loads ``current`` as the next start would (``load_settings``: the environment included) and
    says whether it would start, and if not why.
    """
    name = current.path.name
    diff = file_changes(FolderFiles({name: in_force.data}), FolderFiles({name: current.data}), redact_yaml_lines)
    old, new = _parsed(in_force.data), _parsed(current.data)
    detail: dict[str, Any] = {
        "config_file": str(current.path),
        "old_sha256": in_force.sha256,
        "new_sha256": current.sha256,
        **diff,
    }
    if old is not None and new is not None:
        before, after = _flatten(old), _flatten(new)
        changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
        detail["changed_keys"] = changed
        detail["security_keys"] = [key for key in changed if _watched(key)]
    if check:
        try:
            load_settings(current.path)
            detail["loads"] = True
        except ConfigError as exc:
            # A YAML error quotes the offending line, which may hold a secret: redacted like the diff.
            detail.update(loads=False, error="\n".join(redact_yaml_lines(str(exc).splitlines())))
    return detail
