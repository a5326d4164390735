"""The backend part of a catalog tool: what each kind of backend needs to know, validated strictly at load.

These are the *spec* models (pure data from the catalog files); the backends that act on them live in
:mod:`mcp_gateway.backends`. A new kind of tool adds its spec model here and its backend there.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mcp_gateway.fieldchecks import absolute_http_url

__all__ = ["MODEL_PARAMETERS", "HttpBackend", "ModelBackend", "SpecModel"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")
# Headers that frame or route the request: set by the HTTP client only, never by a catalog.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "trailer",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "accept-encoding",
    }
)


def _check_header_name(name: str) -> None:
    if not _HEADER_TOKEN.fullmatch(name):
        raise ValueError(f"header name {name!r} is not an HTTP token")
    if name.lower() in _RESERVED_HEADERS:
        raise ValueError(f"header {name!r} is set by the gateway's HTTP client, not by a catalog")


class SpecModel(BaseModel):
    """An object of a catalog or inventory file: unknown keys are refused, and it is immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpBackend(SpecModel):
    """A templated request to an in-boundary REST API, made with server-side credentials only."""

    type: Literal["http"] = Field(description="A REST request to an in-boundary API.")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field(default="GET", description="The HTTP method.")
    url: str = Field(
        description="Path placeholders {arg} are filled with the argument, percent-encoded as one segment."
    )
    query: dict[str, str] = Field(default_factory=dict, description="query parameter -> argument name")
    body: dict[str, str] = Field(default_factory=dict, description="JSON body field -> argument name")
    headers: dict[str, str] = Field(default_factory=dict, description="Static headers; never filled from arguments.")
    credential_env: str | None = Field(default=None, description="Environment variable holding the backend secret.")
    credential_file: Path | None = Field(default=None, description="File holding the backend secret.")
    credential_header: str = Field(default="Authorization", description="The header that carries the secret.")
    credential_scheme: str = Field(default="Bearer", description="Written before the secret; empty for none.")
    timeout: float = Field(default=10.0, gt=0, le=300, description="Seconds for the whole request.")
    max_response_bytes: int = Field(
        default=1_048_576, gt=0, le=64 * 1_048_576, description="A larger answer is refused, not truncated."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = absolute_http_url(value)
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials; use credential_env or credential_file")
        if _PLACEHOLDER.search(parts.netloc) or _PLACEHOLDER.search(parts.query) or parts.fragment:
            raise ValueError("placeholders are allowed in the path only; use `query` for query parameters")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, content in value.items():
            _check_header_name(name)
            if not _HEADER_VALUE.fullmatch(content):
                raise ValueError(f"header {name!r}: value must be visible ASCII, spaces and tabs")
        return value

    @field_validator("credential_header")
    @classmethod
    def _credential_header(cls, value: str) -> str:
        _check_header_name(value)
        return value

    @field_validator("credential_scheme")
    @classmethod
    def _credential_scheme(cls, value: str) -> str:
        if value and not _HEADER_TOKEN.fullmatch(value):
            raise ValueError("must be an HTTP token such as Bearer, or empty")
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> HttpBackend:
        if self.credential_env and self.credential_file:
            raise ValueError("set at most one of credential_env and credential_file")
        return self

    @functools.cached_property
    def path_arguments(self) -> tuple[str, ...]:
        return tuple(_PLACEHOLDER.findall(urlsplit(self.url).path))


# Knobs a catalog may let callers set on a model call; everything else (the endpoint, headers, the served model,
# engine-specific extra_body) is the gateway's alone.
MODEL_PARAMETERS = frozenset(
    {"temperature", "top_p", "max_tokens", "seed", "stop", "presence_penalty", "frequency_penalty"}
)


class ModelBackend(SpecModel):
    """A call to an approved model from ``models.yaml``, by inventory name."""

    type: Literal["model"] = Field(description="A call to an approved model.")
    model: str = Field(min_length=1, description="An entry's name in models.yaml.")
    operation: Literal["chat", "completion", "embeddings"] = Field(
        default="chat", description="The OpenAI API the call uses."
    )
    system_prompt: str | None = Field(default=None, max_length=65_536, description="Chat only: the system message.")
    prompt: str = Field(
        min_length=1, max_length=65_536, description="Template; {arg} is replaced by the tool argument `arg`."
    )
    parameters: tuple[str, ...] = Field(
        default=(), description="Caller-settable knobs, taken from arguments of the same name when present."
    )

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - MODEL_PARAMETERS)
        if unknown:
            raise ValueError(f"not caller-settable: {unknown}; choose from {sorted(MODEL_PARAMETERS)}")
        return value

    @model_validator(mode="after")
    def _operation(self) -> ModelBackend:
        if self.operation == "embeddings" and (self.parameters or self.system_prompt):
            raise ValueError("embeddings take neither parameters nor a system_prompt")
        return self

    @property
    def prompt_arguments(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_PLACEHOLDER.findall(self.prompt)))
