"""The approved-model inventory: ``catalogs/models.yaml``.

Every model a tool may reach is declared here with its endpoint, owner, version, the SHA-256 of its weights
(where the operator holds them), whether it is approved, which catalogs may use it, its caps and an optional
fallback. Catalogs refer to models by ``name`` only; callers never name an endpoint or a served model.

Weights brought into the boundary by hand are imported with ``mcp-gateway models import``: the file is copied
into ``artifacts_dir`` only if the bytes written hash to the inventory's ``sha256`` (the "sneakernet with hash
verification" path). ``mcp-gateway models verify`` re-hashes what is there.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mcp_gateway.canonical import digest
from mcp_gateway.config import EgressSettings, read_yaml_file
from mcp_gateway.errors import ConfigError
from mcp_gateway.fieldchecks import absolute_http_url, pattern_check

__all__ = [
    "INVENTORY_FILE",
    "BreakerSettings",
    "Inventory",
    "InventoryFile",
    "ModelEntry",
    "WeightsCheck",
    "entry_digest",
    "import_weights",
    "load_inventory",
    "sha256_file",
    "verify_weights",
]

INVENTORY_FILE = "models.yaml"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CHUNK = 1 << 20

Progress = Callable[[int], None]


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BreakerSettings(_FileModel):
    """When a model endpoint counts as down, and for how long."""

    failures: int = Field(default=1, ge=1, le=100, description="Consecutive failures that open the circuit.")
    reset_after: float = Field(default=30.0, gt=0, le=3600, description="Seconds before one trial call is let through.")


class ModelEntry(_FileModel):
    """One approved (or withdrawn) model and the engine that serves it."""

    name: str = Field(description="The name tools use (`backend.model`).")
    provider: Literal["vllm", "ollama", "llamacpp", "openai-compatible"] = Field(description="The kind of engine.")
    base_url: str = Field(description="The engine's OpenAI-compatible API root, e.g. http://vllm.internal:8000/v1.")
    served_model: str = Field(min_length=1, max_length=512, description="The model id the engine knows.")
    version: str = Field(min_length=1, max_length=128, description="The approved version, as the owner names it.")
    owner: str = Field(min_length=1, max_length=128, description="Who answers for the model.")
    sha256: str | None = Field(default=None, description="SHA-256 of the weights file, lower-case hex.")
    weights: Path | None = Field(default=None, description="The weights file, relative to artifacts_dir.")
    approved: bool = Field(default=False, description="Only approved entries may answer calls.")
    catalogs: tuple[str, ...] = Field(default=(), description="Catalogs whose tools may use this model.")
    max_tokens: int = Field(default=512, ge=1, le=131_072, description="Cap on generated tokens per call.")
    timeout: float = Field(default=30.0, gt=0, le=600, description="Total seconds per call, streaming included.")
    max_retries: int = Field(default=1, ge=0, le=3, description="Retries by the OpenAI client before failing over.")
    fallback: str | None = Field(default=None, description="Another entry's name, tried when this one is down.")
    credential_env: str | None = Field(default=None, description="Environment variable holding the engine's key.")

    _name = field_validator("name")(pattern_check(_NAME, "model names are 1-128 characters of A-Z a-z 0-9 _ . -"))
    _sha256 = field_validator("sha256")(pattern_check(_SHA256, "must be 64 lower-case hex digits"))
    _credential_env = field_validator("credential_env")(
        pattern_check(_ENV_NAME, "must be an environment variable name")
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = absolute_http_url(value)
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("must not carry credentials, a query or a fragment")
        return value.rstrip("/")

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: Path | None) -> Path | None:
        if value is not None and (value.is_absolute() or ".." in value.parts):
            raise ValueError("must be a file name inside artifacts_dir")
        return value


class _InventoryFile(_FileModel):
    artifacts_dir: Path | None = Field(default=None, description="Where `models import` places weights.")
    breaker: BreakerSettings = Field(default=BreakerSettings(), description="When an engine counts as down.")
    models: list[ModelEntry] = Field(description="The inventory's entries.")


@dataclass(frozen=True, slots=True)
class Inventory:
    """The loaded inventory, immutable; swapped whole with the catalogs."""

    entries: Mapping[str, ModelEntry] = field(default_factory=dict)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    artifacts_dir: Path | None = None
    digest: str = ""

    def get(self, name: str) -> ModelEntry | None:
        return self.entries.get(name)

    def chain(self, name: str, catalog: str) -> tuple[ModelEntry, ...]:
        """``name`` and its fallbacks, in order, keeping only approved entries open to ``catalog``."""
        chain: list[ModelEntry] = []
        seen: set[str] = set()
        entry = self.entries.get(name)
        while entry is not None and entry.name not in seen:
            seen.add(entry.name)
            if entry.approved and catalog in entry.catalogs:
                chain.append(entry)
            entry = self.entries.get(entry.fallback) if entry.fallback else None
        return tuple(chain)

    def weights_path(self, entry: ModelEntry) -> Path | None:
        if entry.weights is None or self.artifacts_dir is None:
            return None
        return self.artifacts_dir / entry.weights


def load_inventory(path: Path, egress: EgressSettings) -> Inventory:
    """Load ``models.yaml``; a missing file is an empty inventory.

    Raises:
        ConfigError: the file is unreadable or invalid, a name repeats, a fallback names no entry or loops, or an
            endpoint is not on ``egress.allow``. The message names the file and the key.
    """
    if not path.exists():
        return Inventory()
    parsed, raw = read_yaml_file(path, _InventoryFile)
    entries: dict[str, ModelEntry] = {}
    for index, entry in enumerate(parsed.models):
        if entry.name in entries:
            raise ConfigError(f"{path}: models.{index}.name: {entry.name!r} is defined twice")
        if not egress.permits(entry.base_url):
            raise ConfigError(f"{path}: models.{index}.base_url: {entry.base_url!r} is not on egress.allow")
        entries[entry.name] = entry
    for index, entry in enumerate(parsed.models):
        _check_fallback(path, index, entry, entries)
        if entry.weights is not None and parsed.artifacts_dir is None:
            raise ConfigError(f"{path}: models.{index}.weights: set artifacts_dir to say where weights live")
    artifacts = parsed.artifacts_dir
    if artifacts is not None and not artifacts.is_absolute():
        artifacts = path.parent / artifacts
    return Inventory(entries, parsed.breaker, artifacts, hashlib.sha256(raw).hexdigest())


def _check_fallback(path: Path, index: int, entry: ModelEntry, entries: Mapping[str, ModelEntry]) -> None:
    seen = {entry.name}
    current = entry
    while current.fallback is not None:
        nxt = entries.get(current.fallback)
        if nxt is None:
            raise ConfigError(f"{path}: models.{index}.fallback: {current.fallback!r} names no model")
        if nxt.name in seen:
            raise ConfigError(f"{path}: models.{index}.fallback: the fallback chain loops through {nxt.name!r}")
        seen.add(nxt.name)
        current = nxt


def entry_digest(entry: ModelEntry) -> str:
    """A digest of one entry, pinned into the digest of every tool that uses it."""
    return digest(entry.model_dump(mode="json"))


# -- weights -------------------------------------------------------------------------------------------------


def _chunks(handle: BinaryIO, progress: Progress | None) -> Iterator[bytes]:
    while chunk := handle.read(_CHUNK):
        if progress is not None:
            progress(len(chunk))
        yield chunk


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks; ``progress`` gets the bytes read each step.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in _chunks(handle, progress):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class WeightsCheck:
    """What ``verify`` found for one entry."""

    name: str
    path: Path | None
    status: Literal["ok", "mismatch", "missing", "no-hash", "no-file"]
    actual: str | None = None


def verify_weights(
    inventory: Inventory, progress: Callable[[ModelEntry, Path], Progress | None] | None = None
) -> list[WeightsCheck]:
    """Hash each entry's weights file and compare it with the inventory."""
    checks: list[WeightsCheck] = []
    for entry in inventory.entries.values():
        path = inventory.weights_path(entry)
        if path is None:
            checks.append(WeightsCheck(entry.name, None, "no-file"))
            continue
        if entry.sha256 is None:
            checks.append(WeightsCheck(entry.name, path, "no-hash"))
            continue
        if not path.is_file():
            checks.append(WeightsCheck(entry.name, path, "missing"))
            continue
        actual = sha256_file(path, progress(entry, path) if progress else None)
        checks.append(WeightsCheck(entry.name, path, "ok" if actual == entry.sha256 else "mismatch", actual))
    return checks


def import_weights(
    inventory: Inventory,
    name: str,
    source: Path,
    expected: str,
    progress: Progress | None = None,
    before_place: Callable[[str], None] | None = None,
) -> Path:
    """Copy ``source`` into ``artifacts_dir`` as entry ``name``'s weights, only if its bytes hash to ``expected``.

    The hash is computed over the bytes written (not a second read of the source), into a temporary file in the
    artifacts folder that is renamed into place only after it matched; on a mismatch nothing is left behind.
    ``before_place`` is called with the verified digest just before the rename (the audit record goes first):
    if it raises, nothing is placed.

    Raises:
        ConfigError: ``name`` is unknown, has no ``weights``, its inventory hash differs from ``expected``, or the
            copied bytes do not hash to ``expected``.
        OSError: the source cannot be read or the destination written.
    """
    entry = inventory.get(name)
    if entry is None:
        raise ConfigError(f"models import: {name!r} is not in the inventory")
    destination = inventory.weights_path(entry)
    if destination is None:
        raise ConfigError(f"models import: {name!r} has no weights file (set weights and artifacts_dir)")
    expected = expected.lower()
    if not _SHA256.fullmatch(expected):
        raise ConfigError("models import: --sha256 must be 64 hex digits")
    if entry.sha256 is not None and entry.sha256 != expected:
        raise ConfigError(f"models import: --sha256 differs from the inventory's sha256 for {name!r}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=".import-", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, source.open("rb") as inp:
            for chunk in _chunks(inp, progress):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != expected:
            raise ConfigError(f"models import: {source} hashes to {actual}, not {expected}; nothing imported")
        if before_place is not None:
            before_place(actual)
        shutil.move(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return destination


# The file format, public for the generated reference (docs/models-reference.md); loading stays load_inventory.
InventoryFile = _InventoryFile
