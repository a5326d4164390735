"""Tool catalogs: which tools exist, for which audience, and how each one reaches its backend.

``catalogs/<name>.yaml`` holds one catalog (``internal``, ``partner``, ...). Files are validated strictly at
load: a catalog that does not load refuses start-up and, on reload, leaves the last good catalogs in force.
Each tool's published definition is hashed; the hash lands in the audit trail, so a changed definition is
visible (rug-pull protection).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import mcp_types as types
from pydantic import Field, ValidationError, field_validator, model_validator

from mcp_gateway.canonical import digest as canonical_digest
from mcp_gateway.catalog.servers import ServerSpec, UpstreamToolBackend
from mcp_gateway.catalog.specs import HttpBackend, ModelBackend, SpecModel
from mcp_gateway.config import EgressSettings, read_yaml_file
from mcp_gateway.dlp import Action
from mcp_gateway.errors import ConfigError
from mcp_gateway.fieldchecks import pattern_check
from mcp_gateway.inventory import INVENTORY_FILE, Inventory, entry_digest, load_inventory
from mcp_gateway.ratelimit import RateSpec, parse_rate

__all__ = [
    "CATALOG_NAME",
    "PARTNER_CATALOGS",
    "RESERVED_FILES",
    "TOOL_NAME",
    "CatalogFile",
    "CatalogSet",
    "ToolSpec",
    "catalog_fingerprint",
    "load_catalogs",
]

# MCP tool names: 1-128 characters from this set. Anything else cannot name a tool, so a call naming it is
# simply unknown; the catalog loader refuses such names outright.
TOOL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
CATALOG_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
RESERVED_FILES = frozenset({INVENTORY_FILE})


def _check_rate(value: str | None) -> str | None:
    if value is not None:
        parse_rate(value)
    return value


# Catalogs whose callers are outside the organisation: DLP blocks by default there.
PARTNER_CATALOGS = frozenset({"partner"})


class _ToolModel(SpecModel):
    name: str = Field(description="The tool's name as callers see it and policy names it, e.g. crm.customer_lookup.")
    title: str | None = Field(default=None, description="A human-readable title.")
    description: str = Field(min_length=1, description="What the tool does, as the agent reads it.")
    input_schema: dict[str, Any] = Field(
        description='A JSON Schema (2020-12) with "type": "object"; every call is validated.'
    )
    annotations: types.ToolAnnotations | None = Field(default=None, description="MCP tool annotations (hints).")
    backend: Annotated[HttpBackend | ModelBackend, Field(discriminator="type")] = Field(
        description="Where an allowed call goes: `type: http` or `type: model`."
    )
    rate_limit: str | None = Field(default=None, description="Per subject, e.g. 60/minute; overrides the catalog's.")
    dlp: Action | None = Field(default=None, description="block, redact or flag; overrides the catalog's.")
    approval: Literal["required", "none"] = Field(
        default="none", description="required: each call waits for a second person to approve that exact call."
    )
    audit: Literal["decision-first", "outcome-only"] = Field(
        default="decision-first",
        description=(
            "decision-first: the decision is committed before the backend is called, the outcome after (two rows). "
            "outcome-only: one row after the backend answers, the result still withheld unless it commits; only "
            "for tools marked read_only_hint, which have no side effect to put on record first."
        ),
    )

    _rate = field_validator("rate_limit")(_check_rate)

    @model_validator(mode="after")
    def _outcome_only_for_reads(self) -> _ToolModel:
        if self.audit == "outcome-only" and not (self.annotations and self.annotations.read_only_hint is True):
            raise ValueError("audit: outcome-only needs annotations.read_only_hint: true (a tool with no side effects)")
        return self

    _name = field_validator("name")(
        pattern_check(
            TOOL_NAME, "tool names are 1-128 characters of A-Z a-z 0-9 _ . - and start with a letter, digit or _"
        )
    )

    @field_validator("input_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise ValueError('the root of input_schema must have "type": "object"')
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from exc
        return value

    @model_validator(mode="after")
    def _arguments_exist(self) -> _ToolModel:
        properties = self.input_schema.get("properties", {})
        if isinstance(self.backend, ModelBackend):
            return self._model_arguments(self.backend, properties)
        wanted = [*self.backend.path_arguments, *self.backend.query.values(), *self.backend.body.values()]
        missing = sorted({name for name in wanted if name not in properties})
        if missing:
            raise ValueError(f"backend uses arguments missing from input_schema.properties: {missing}")
        required = set(self.input_schema.get("required", []))
        optional_path = sorted(set(self.backend.path_arguments) - required)
        if optional_path:
            raise ValueError(f"path arguments must be required in input_schema: {optional_path}")
        return self

    def _model_arguments(self, backend: ModelBackend, properties: Mapping[str, Any]) -> _ToolModel:
        missing = sorted({name for name in (*backend.prompt_arguments, *backend.parameters) if name not in properties})
        if missing:
            raise ValueError(f"backend uses arguments missing from input_schema.properties: {missing}")
        optional = sorted(set(backend.prompt_arguments) - set(self.input_schema.get("required", [])))
        if optional:
            raise ValueError(f"prompt arguments must be required in input_schema: {optional}")
        return self


class _CatalogFile(SpecModel):
    rate_limit: str | None = Field(default=None, description="Default per subject and tool, e.g. 60/minute.")
    dlp: Action | None = Field(default=None, description="Default DLP action; partner catalogs default to block.")
    tools: list[_ToolModel] = Field(default_factory=list, description="The catalog's tools.")
    servers: list[ServerSpec] = Field(
        default_factory=list, description="Upstream MCP servers whose (pinned) tools appear as <server>.<tool>."
    )

    _rate = field_validator("rate_limit")(_check_rate)


@dataclass(frozen=True, slots=True, eq=False)
class ToolSpec:
    """One tool as published to one catalog."""

    name: str
    catalog: str
    definition: types.Tool
    backend: HttpBackend | ModelBackend | UpstreamToolBackend
    digest: str
    validator: jsonschema.protocols.Validator = field(repr=False)
    rate_limit: RateSpec | None = None
    dlp: Action = "flag"
    approval_required: bool = False
    decision_first: bool = True  # commit the decision row before the backend is called


@dataclass(frozen=True, slots=True)
class CatalogSet:
    """Every catalog, immutable; swapped whole on reload."""

    catalogs: Mapping[str, Mapping[str, ToolSpec]]
    version: str
    models: Inventory = field(default_factory=Inventory)
    # Each catalog's upstream MCP servers, by name (their tools are added by mcp_gateway.federation).
    servers: Mapping[str, Mapping[str, ServerSpec]] = field(default_factory=dict)

    def lookup(self, catalog: str, name: str) -> ToolSpec | None:
        return self.catalogs.get(catalog, {}).get(name)

    def tools(self, catalog: str) -> tuple[ToolSpec, ...]:
        return tuple(self.catalogs.get(catalog, {}).values())

    def names(self) -> dict[str, tuple[str, ...]]:
        return {name: tuple(tools) for name, tools in self.catalogs.items()}


def _tool_spec(
    catalog: str, model: _ToolModel, defaults: _CatalogFile | None = None, pinned: Mapping[str, str] | None = None
) -> ToolSpec:
    definition = types.Tool(
        name=model.name,
        title=model.title,
        description=model.description,
        input_schema=model.input_schema,
        annotations=model.annotations,
    )
    published = definition.model_dump(mode="json", by_alias=True, exclude_none=True)
    # A model tool's digest covers the inventory entries it may reach: a changed endpoint, served model or
    # version is a changed tool.
    digest = canonical_digest({"tool": published, "backend": model.backend.model_dump(mode="json"), **(pinned or {})})
    validator = jsonschema.Draft202012Validator(model.input_schema, format_checker=jsonschema.FormatChecker())
    rate = model.rate_limit or (defaults.rate_limit if defaults else None)
    dlp: Action = (
        model.dlp or (defaults.dlp if defaults else None) or ("block" if catalog in PARTNER_CATALOGS else "flag")
    )
    return ToolSpec(
        model.name,
        catalog,
        definition,
        model.backend,
        digest,
        validator,
        rate_limit=parse_rate(rate) if rate else None,
        dlp=dlp,
        approval_required=model.approval == "required",
        decision_first=model.audit == "decision-first",
    )


def catalog_fingerprint(catalogs_dir: Path) -> str:
    """A digest of the catalog files' names and contents: cheap change detection without parsing."""
    digest = hashlib.sha256()
    for path in sorted([*catalogs_dir.glob("*.yaml"), *catalogs_dir.glob("*.yml")]):
        digest.update(path.name.encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            digest.update(f"unreadable: {exc.errno}".encode())
        digest.update(b"\0")
    return digest.hexdigest()


def load_catalogs(catalogs_dir: Path, egress: EgressSettings) -> CatalogSet:
    """Load and validate every ``<catalog>.yaml`` in ``catalogs_dir``.

    Raises:
        ConfigError: a file is unreadable or invalid, a name repeats, or a backend URL is not on the egress
            allowlist. The message names the file and the key.
    """
    if not catalogs_dir.is_dir():
        raise ConfigError(f"catalogs_dir: {catalogs_dir} is not a folder")
    catalogs: dict[str, dict[str, ToolSpec]] = {}
    servers: dict[str, dict[str, ServerSpec]] = {}
    digests: dict[str, str] = {}
    misnamed = sorted(path.name for path in catalogs_dir.glob("*.yml"))
    if misnamed:
        raise ConfigError(f"{catalogs_dir}: catalogs end in .yaml; rename {misnamed} (they would be ignored)")
    inventory = load_inventory(catalogs_dir / INVENTORY_FILE, egress)
    for path in sorted(catalogs_dir.glob("*.yaml")):
        if path.name in RESERVED_FILES:
            continue
        name = path.stem
        if not CATALOG_NAME.fullmatch(name):
            raise ConfigError(f"{path}: catalog names are lower-case letters, digits, _ and -")
        parsed, raw = read_yaml_file(path, _CatalogFile, _describe)
        tools: dict[str, ToolSpec] = {}
        for index, model in enumerate(parsed.tools):
            if model.name in tools:
                raise ConfigError(f"{path}: tools.{index}.name: {model.name!r} is defined twice")
            if isinstance(model.backend, ModelBackend):
                pinned = _model_pins(inventory, name, model.backend, f"{path}: tools.{index}.backend.model")
                tools[model.name] = _tool_spec(name, model, parsed, pinned)
                continue
            if not egress.permits(model.backend.url):
                raise ConfigError(f"{path}: tools.{index}.backend.url: {model.backend.url!r} is not on egress.allow")
            secret_file = model.backend.credential_file
            if secret_file is not None and not secret_file.is_absolute():
                # Relative to the catalog file, like every other path in the configuration.
                backend = model.backend.model_copy(update={"credential_file": path.parent / secret_file})
                model = model.model_copy(update={"backend": backend})
            tools[model.name] = _tool_spec(name, model, parsed)
        catalogs[name] = tools
        servers[name] = _servers(path, parsed.servers, tools, egress)
        digests[name] = hashlib.sha256(raw).hexdigest()
    if not catalogs:
        raise ConfigError(f"catalogs_dir: {catalogs_dir} holds no catalog (*.yaml)")
    if inventory.digest:
        digests[INVENTORY_FILE] = inventory.digest
    return CatalogSet(catalogs=catalogs, version=canonical_digest(digests), models=inventory, servers=servers)


def _servers(
    path: Path, specs: list[ServerSpec], tools: Mapping[str, ToolSpec], egress: EgressSettings
) -> dict[str, ServerSpec]:
    """A catalog's servers by name, checked against each other, its tools and the egress allowlist; relative
    paths resolved against the catalog file."""
    servers: dict[str, ServerSpec] = {}
    for index, spec in enumerate(specs):
        where = f"{path}: servers.{index}"
        if spec.name in servers:
            raise ConfigError(f"{where}.name: {spec.name!r} is defined twice")
        clash = sorted(name for name in tools if name.startswith(spec.name + "."))
        if clash:
            raise ConfigError(f"{where}.name: {spec.name!r} would shadow the catalog's own tools {clash}")
        if spec.url is not None and not egress.permits(spec.url):
            raise ConfigError(f"{where}.url: {spec.url!r} is not on egress.allow")
        update: dict[str, Any] = {}
        for key in ("credential_file", "cwd"):
            value = getattr(spec, key)
            if value is not None and not value.is_absolute():
                update[key] = path.parent / value
        servers[spec.name] = spec.model_copy(update=update) if update else spec
    return servers


def _describe(exc: ValidationError) -> str:
    """As ``describe_validation_error``, without the union tag pydantic puts in the key (``backend.http.url``)."""
    lines = []
    for error in exc.errors():
        loc = list(error["loc"])
        for index in range(len(loc) - 1):
            if loc[index] == "backend" and loc[index + 1] in ("http", "model"):
                del loc[index + 1]
                break
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("type")
        lines.append(f"{'.'.join(str(part) for part in loc) or '(top level)'}: {error['msg']}")
    return "; ".join(lines)


def _model_pins(inventory: Inventory, catalog: str, backend: ModelBackend, where: str) -> dict[str, str]:
    """Refuse a model tool whose model is unknown, unapproved or not open to this catalog; pin its chain."""
    entry = inventory.get(backend.model)
    if entry is None:
        raise ConfigError(f"{where}: {backend.model!r} is not in {INVENTORY_FILE}")
    if not entry.approved:
        raise ConfigError(f"{where}: {backend.model!r} is not approved in {INVENTORY_FILE}")
    if catalog not in entry.catalogs:
        raise ConfigError(f"{where}: {backend.model!r} is not approved for catalog {catalog!r}")
    return {f"model:{item.name}": entry_digest(item) for item in inventory.chain(backend.model, catalog)}


# The file format, public for the generated reference (docs/catalogs-reference.md); loading stays load_catalogs.
CatalogFile = _CatalogFile
