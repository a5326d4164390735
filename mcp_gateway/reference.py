"""The file-format references in docs/, generated from the models that validate the files, so they cannot drift.

Each reference is a Markdown table of every key (dotted path), its type, its default and its description, taken
from the pydantic models themselves: the settings (``mcp-gateway.yaml``), a catalog file and the model inventory.
``mcp-gateway config reference`` prints one; a test checks that the files in docs/ are what it prints now.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

__all__ = ["REFERENCES", "Key", "Reference", "keys", "render"]


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a file format."""

    path: str
    type: str
    default: str
    description: str


@dataclass(frozen=True, slots=True)
class Reference:
    """One generated document: which model it describes and where it is kept."""

    name: str
    title: str
    intro: str
    document: str  # relative to the repository root

    def model(self) -> type[BaseModel]:
        # Imported here: the catalog loader and the settings are heavier than this module's other users need.
        from mcp_gateway.catalog.loader import CatalogFile
        from mcp_gateway.config import Settings
        from mcp_gateway.inventory import InventoryFile

        models: dict[str, type[BaseModel]] = {"config": Settings, "catalog": CatalogFile, "inventory": InventoryFile}
        return models[self.name]


REFERENCES = (
    Reference(
        "config",
        "Configuration reference",
        "One YAML file (`--config PATH`, else `$MCP_GATEWAY_CONFIG`, else `mcp-gateway.yaml`). Any key can be "
        "overridden by an environment variable: `MCP_GATEWAY_IDENTITY__ISSUER` overrides `identity.issuer`. "
        "Relative paths are resolved against the file's folder. An unknown key or an invalid value exits with "
        "status 2 and names the key.",
        "docs/configuration.md",
    ),
    Reference(
        "catalog",
        "Catalog file reference",
        "`catalogs/<name>.yaml` is the catalog `<name>` (tokens carry `catalog: <name>`). Unknown keys are "
        "refused; a catalog that does not load refuses start-up and, on reload, leaves the last good catalogs "
        "in force. `tools[].backend` is one of the backend kinds below, chosen by its `type`.",
        "docs/catalogs-reference.md",
    ),
    Reference(
        "inventory",
        "Model inventory reference",
        "`catalogs/models.yaml` is the approved-model inventory: a model tool may use only a model listed here "
        "with `approved: true` and its catalog in `catalogs`. Every `base_url` must be on `egress.allow`.",
        "docs/models-reference.md",
    ),
)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(f"`{value}`" for value in arguments)
    if origin in (typing.Union, types.UnionType):
        named = [_type_name(argument) for argument in arguments if argument is not type(None)]
        optional = len(named) < len(arguments)
        return " or ".join(named) + (", optional" if optional else "")
    if origin is typing.Annotated:
        return _type_name(arguments[0])
    if origin in (tuple, list, set, frozenset):
        return f"list of {_type_name(arguments[0])}" if arguments else "list"
    if origin is dict:
        return f"mapping of {_type_name(arguments[0])} to {_type_name(arguments[1])}" if arguments else "mapping"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path", type(None): "none"}
    if annotation in names:
        return names[annotation]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " | ".join(f"`{member.value}`" for member in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        # A model of another library's (the SDK's tool annotations): its keys, which that library documents.
        return (
            "object"
            if annotation.__module__.startswith("mcp_gateway.")
            else f"object: {', '.join(annotation.model_fields)}"
        )
    return "any" if annotation is Any else getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return ""
    if value is None:
        return "none"
    if isinstance(value, tuple | list | set | frozenset):
        return "`[" + ", ".join(str(item) for item in value) + "]`" if value else "`[]`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's value is made of: itself, a list's items, a union's members."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for argument in typing.get_args(annotation):
        found.extend(_models_in(argument))
    return found


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        return any(_is_list(argument) for argument in typing.get_args(annotation))
    return typing.get_origin(annotation) in (list, tuple)


def keys(model: type[BaseModel], prefix: str = "") -> Iterator[Key]:
    """Every key of ``model``, nested models flattened into dotted paths (``tools[].backend.url``)."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = [model for model in _models_in(field.annotation) if model.__module__.startswith("mcp_gateway.")]
        description = " ".join((field.description or "").split())
        if not nested:
            yield Key(path, _type_name(field.annotation), _default(field), description)
            continue
        inner = f"{path}[]" if _is_list(field.annotation) else path
        if not description and len(nested) == 1:
            description = " ".join((nested[0].__doc__ or "").split())
        yield Key(path, "list of objects" if inner != path else "object", _default(field), description)
        for member in nested:
            kind = member.model_fields.get("type")
            tag = typing.get_args(kind.annotation) if kind is not None else ()
            # A discriminated union (a catalog tool's backend): each member's keys under its own `type`.
            label = f" (type: {tag[0]})" if len(nested) > 1 and len(tag) == 1 else ""
            if label:
                yield Key(f"{inner}{label}", "object", "", " ".join((member.__doc__ or "").split()))
            yield from keys(member, f"{inner}{label}.")


def render(reference: Reference) -> str:
    """The document for ``reference``: a title, the introduction, and one table row per key."""
    lines = [
        f"# {reference.title}",
        "",
        "<!-- Generated by `mcp-gateway config reference "
        f"{reference.name}` from the models that validate the file; do not edit. -->",
        "",
        reference.intro,
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for key in keys(reference.model()):
        cells = (f"`{key.path}`", key.type, key.default, key.description)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
