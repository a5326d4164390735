"""A catalog's upstream MCP servers (``servers:``): what each one is and how the gateway reaches it.

Pure data, validated strictly at load like the rest of a catalog. A stdio server is an argv (never a shell
string) with the whole environment it gets (``PATH`` aside, nothing of the gateway's is inherited); an HTTP
server is a URL that must be on ``egress.allow``, reached with a server-side credential only.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mcp_gateway.catalog.specs import SpecModel
from mcp_gateway.fieldchecks import absolute_http_url, pattern_check

__all__ = ["SERVER_NAME", "ServerSpec", "UpstreamToolBackend"]

SERVER_NAME = re.compile(r"[a-z0-9_-]{1,32}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class ServerSpec(SpecModel):
    """One upstream MCP server whose tools the catalog re-publishes as ``<name>.<tool>``."""

    name: str = Field(description="[a-z0-9_-]{1,32}; its tools appear as <name>.<tool>.")
    transport: Literal["stdio", "streamable-http", "sse"] = Field(description="How the gateway reaches it.")
    command: tuple[str, ...] | None = Field(default=None, description="stdio: the argv, never a shell string.")
    env: dict[str, str] = Field(
        default_factory=dict, description="stdio: the whole environment it gets (PATH aside): nothing is inherited."
    )
    cwd: Path | None = Field(default=None, description="stdio: the working folder (relative to the catalog file).")
    url: str | None = Field(default=None, description="HTTP transports: the endpoint; must be on egress.allow.")
    credential_env: str | None = Field(
        default=None, description="HTTP: the variable holding the secret sent as Authorization: Bearer."
    )
    credential_file: Path | None = Field(default=None, description="HTTP: the file holding that secret.")
    tools: tuple[str, ...] = Field(default=(), description="Globs of the upstream tools to import; default all.")
    refresh: float = Field(default=60.0, gt=0, le=86_400, description="Seconds between re-listing its tools.")
    timeout: float = Field(default=30.0, gt=0, le=3_600, description="Seconds per call.")
    max_response_bytes: int = Field(
        default=1_048_576, gt=0, le=64 * 1_048_576, description="A larger result is refused, not truncated."
    )

    _name = field_validator("name")(pattern_check(SERVER_NAME, "server names are 1-32 characters of a-z 0-9 _ -"))

    @field_validator("command", mode="before")
    @classmethod
    def _argv(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("command is an argv list such as [python, -m, server], never a shell string")
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError("command needs at least the program")
            for item in value:
                if not isinstance(item, str) or not item or "\0" in item:
                    raise ValueError("every argv item is a non-empty string without NUL")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, content in value.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if "\0" in content:
                raise ValueError(f"{name}: a value cannot hold NUL")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = absolute_http_url(value)
            if parts.username is not None or parts.password is not None:
                raise ValueError("must not carry credentials; use credential_env or credential_file")
        return value

    @field_validator("tools")
    @classmethod
    def _globs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for glob in value:
            if not glob or len(glob) > 128:
                raise ValueError("a tools glob is 1-128 characters")
        return value

    @model_validator(mode="after")
    def _transport_fields(self) -> ServerSpec:
        if self.transport == "stdio":
            if self.command is None:
                raise ValueError("a stdio server needs command")
            if self.url or self.credential_env or self.credential_file:
                raise ValueError("a stdio server takes command and env, not url or credential_*")
            return self
        if self.url is None:
            raise ValueError(f"a {self.transport} server needs url")
        if self.command is not None or self.env or self.cwd is not None:
            raise ValueError(f"a {self.transport} server takes url, not command, env or cwd")
        if self.credential_env and self.credential_file:
            raise ValueError("set at most one of credential_env and credential_file")
        return self

    def imports(self, tool: str) -> bool:
        """Whether the catalog imports the upstream tool ``tool`` (``tools`` globs; none means every tool)."""
        return not self.tools or any(fnmatch.fnmatchcase(tool, glob) for glob in self.tools)


class UpstreamToolBackend(SpecModel):
    """The backend part of a federated tool: which server, which upstream tool, and the pinned digest."""

    type: Literal["upstream"] = "upstream"
    server: str
    tool: str
    pinned_digest: str
    output_schema: dict[str, Any] | None = None
