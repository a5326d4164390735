"""Builds a gateway whose catalogs hold model tools: config, catalogs/models.yaml, a catalog and a policy."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.backends.model import ModelRouter
from mcp_gateway.config import Settings, load_settings
from mcp_gateway.devkeys import ensure_dev_key
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import Principal
from mcp_gateway.policy import PolicyEngine
from mcp_gateway.server import build_backends
from tests.conftest import ISSUER, ROOT

ALICE = Principal("alice", ("support",), "internal", (), None, "test", 2**40)

SUMMARISE_SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "maxLength": 2000},
        "temperature": {"type": "number"},
        "max_tokens": {"type": "integer"},
        "stop": {"type": ["string", "array"]},
    },
    "required": ["text"],
    "additionalProperties": False,
}


def model(name: str, base_url: str, served_model: str, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "provider": "openai-compatible",
        "base_url": base_url,
        "served_model": served_model,
        "version": "1",
        "owner": "ml-platform",
        "approved": True,
        "catalogs": ["internal"],
        "max_tokens": 16,
        "timeout": 2,
        "max_retries": 0,
    }
    entry.update(extra)
    return entry


def model_tool(name: str, model_name: str, **backend: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "model",
        "model": model_name,
        "operation": "chat",
        "system_prompt": "You summarise.",
        "prompt": "Summarise: {text}",
        "parameters": ["temperature", "max_tokens", "stop"],
    }
    spec.update(backend)
    return {"name": name, "description": f"{name} via a model", "input_schema": SUMMARISE_SCHEMA, "backend": spec}


def write_deployment(
    root: Path, models: list[dict[str, Any]], tools: list[dict[str, Any]], allow: list[str], **inventory: Any
) -> Path:
    """Write a config folder; returns the config file's path."""
    (root / "catalogs").mkdir(parents=True)
    (root / "catalogs" / "internal.yaml").write_text(yaml.safe_dump({"tools": tools}))
    (root / "catalogs" / "models.yaml").write_text(yaml.safe_dump({"models": models, **inventory}))
    shutil.copytree(ROOT / "policies", root / "policies")
    with (root / "policies" / "internal.csv").open("a") as policy:
        policy.write("p, role:support, internal, llm.*, call, allow\n")
    jwks = root / "jwks.json"
    jwks.write_text(json.dumps(ensure_dev_key(root / "keys").jwks()))
    config = {
        "identity": {"issuer": ISSUER, "audience": "http://127.0.0.1:1/mcp", "jwks_file": str(jwks)},
        "egress": {"allow": allow},
        "state_dir": "state",
    }
    path = root / "mcp-gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def build(config: Path, clock: Callable[[], float] | None = None) -> Gateway:
    settings: Settings = load_settings(config)
    router = ModelRouter(settings.egress, clock=clock) if clock else ModelRouter(settings.egress)
    backends = build_backends(settings)
    backends.use("model", router)
    return Gateway(
        settings, audit=AuditLog(settings.database_url), policy=PolicyEngine(settings.policies_dir), backends=backends
    )


async def close(gateway: Gateway) -> None:
    await gateway.aclose()
    gateway.audit.close()
