"""Model tools: an authorised call becomes a chat, completion or embeddings request to an approved model.

This is the only module that imports ``openai``. Each inventory entry gets one ``AsyncOpenAI`` client, built
explicitly (``base_url``, ``api_key`` from the entry's server-side secret, its timeout, bounded retries) on one
shared guarded ``httpx2`` client (see ``egress.py``), and reused. The OpenAI client reads ``OPENAI_*`` variables
of its own accord even when given explicit values (organisation, project, ``OPENAI_CUSTOM_HEADERS``, which can
even replace ``Authorization``); the gateway sets ``Authorization`` itself and the guarded transport sends only
an allowlist of headers, so nothing from the environment reaches an engine.

Routing: the tool's model first, then its approved fallbacks open to the caller's catalog. An endpoint that
times out, cannot be reached, answers 5xx/429 or sends a malformed answer counts against its circuit breaker
and the next fallback is tried; a 4xx is the request's own fault and is returned without failing over. When
no model is left, the caller gets ``unavailable``.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import mcp_types as types
import openai
import pydantic
from openai import AsyncOpenAI, omit
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from mcp_gateway.backends import Answer, BackendCall, ProgressFn
from mcp_gateway.backends.breaker import CircuitBreaker
from mcp_gateway.catalog import ModelBackend, ToolSpec
from mcp_gateway.config import EgressSettings
from mcp_gateway.egress import Resolver, guarded_httpx2_client
from mcp_gateway.errors import InvalidArgumentsError, ModelEndpointError, ModelUnavailableError, UpstreamError
from mcp_gateway.inventory import BreakerSettings, ModelEntry
from mcp_gateway.telemetry import fail_span, inject_traceparent, model_span, record_usage

__all__ = ["ModelRouter", "map_openai_errors", "render_prompt"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
_MAX_STOP = 4
_SAMPLING = ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")


@contextmanager
def map_openai_errors(model: str) -> Iterator[None]:
    """Translate OpenAI client failures at this one edge.

    Raises:
        ModelEndpointError: the endpoint timed out, could not be reached, answered 3xx, 5xx, 408 or 429, or sent an
            answer that does not parse. Counts against the endpoint's breaker.
        UpstreamError: the endpoint refused the request itself (another 4xx).
    """
    try:
        yield
    except openai.APIStatusError as exc:
        # 3xx included: redirects are never followed, so an endpoint that redirects is misconfigured or moved.
        if not 400 <= exc.status_code < 500 or exc.status_code in (408, 429):
            raise ModelEndpointError(f"{model}: endpoint answered HTTP {exc.status_code}") from exc
        raise UpstreamError(f"{model}: endpoint refused the request with HTTP {exc.status_code}") from exc
    except (openai.APITimeoutError, TimeoutError) as exc:
        raise ModelEndpointError(f"{model}: timed out ({type(exc).__name__})") from exc
    except openai.APIConnectionError as exc:
        cause = exc.__cause__ or exc
        raise ModelEndpointError(f"{model}: connection failed: {type(cause).__name__}: {cause}") from exc
    except (openai.OpenAIError, json.JSONDecodeError, pydantic.ValidationError) as exc:
        raise ModelEndpointError(f"{model}: malformed answer: {type(exc).__name__}") from exc


def render_prompt(template: str, arguments: Mapping[str, Any]) -> str:
    """Fill ``{name}`` placeholders once, left to right; argument text is never re-scanned for placeholders."""

    def value(match: re.Match[str]) -> str:
        item = arguments[match.group(1)]
        return item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)

    return _PLACEHOLDER.sub(value, template)


def _knobs(backend: ModelBackend, arguments: Mapping[str, Any], cap: int) -> dict[str, Any]:
    """The caller's allowlisted knobs, type-checked and clamped; ``max_tokens`` never exceeds the model's cap."""
    knobs: dict[str, Any] = {"max_tokens": cap}
    for name in backend.parameters:
        if name not in arguments:
            continue
        value = arguments[name]
        if name == "stop":
            stops = [value] if isinstance(value, str) else value
            if not isinstance(stops, list) or not all(isinstance(item, str) for item in stops):
                raise InvalidArgumentsError(f"{name}: not a string or list", public_detail=f"{name}: not text")
            knobs[name] = stops[:_MAX_STOP]
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgumentsError(f"{name}: not a number", public_detail=f"{name}: not a number")
        if name in ("max_tokens", "seed"):
            if int(value) != value:
                raise InvalidArgumentsError(f"{name}: not an integer", public_detail=f"{name}: not an integer")
            knobs[name] = max(1, min(int(value), cap)) if name == "max_tokens" else int(value)
            continue
        low, high = _RANGES[name]
        knobs[name] = min(max(float(value), low), high)
    return knobs


def _span_attributes(entry: ModelEntry) -> dict[str, str | int]:
    """Where the request goes: the inventory entry and the endpoint's address, never a credential."""
    url = urlsplit(entry.base_url)
    return {
        "mcp_gateway.model": entry.name,
        "mcp_gateway.model.provider": entry.provider,
        "server.address": url.hostname or "",
        "server.port": url.port or (443 if url.scheme == "https" else 80),
    }


def _usage(usage: Any) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        key: int(getattr(usage, key))
        for key in ("prompt_tokens", "completion_tokens", "total_tokens")
        if isinstance(getattr(usage, key, None), int)
    }


class ModelRouter:
    """Routes model tools to approved endpoints, with breakers and fallbacks. Build once; it holds the clients."""

    def __init__(
        self,
        egress: EgressSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        resolver: Resolver | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._http = guarded_httpx2_client(egress, resolver=resolver)
        self._clock = clock
        self._environ = environ
        self._clients: dict[tuple[str, str | None, float, int], AsyncOpenAI] = {}
        self._breakers: dict[str, CircuitBreaker] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    def breaker_states(self) -> dict[str, str]:
        """Each model endpoint's breaker state (``closed``, ``open``, ``half-open``), by inventory name."""
        return {name: breaker.state for name, breaker in sorted(self._breakers.items())}

    def breaker(self, name: str, settings: BreakerSettings) -> CircuitBreaker:
        """The breaker of entry ``name``; kept across reloads unless the breaker settings change."""
        breaker = self._breakers.get(name)
        if breaker is None or (breaker.failures, breaker.reset_after) != (settings.failures, settings.reset_after):
            breaker = CircuitBreaker(settings.failures, settings.reset_after, self._clock)
            self._breakers[name] = breaker
        return breaker

    def _client(self, entry: ModelEntry) -> AsyncOpenAI:
        secret = None
        if entry.credential_env:
            secret = self._environ.get(entry.credential_env)
            if not secret:
                raise ModelEndpointError(f"{entry.name}: credential_env {entry.credential_env} is not set")
        key = (entry.base_url, secret, entry.timeout, entry.max_retries)
        client = self._clients.get(key)
        if client is None:
            client = AsyncOpenAI(
                # Explicit, so OPENAI_API_KEY and OPENAI_BASE_URL are never consulted. An engine without a key
                # gets a placeholder that the transport's header allowlist lets through harmlessly.
                api_key=secret or "no-key",
                base_url=entry.base_url,
                timeout=entry.timeout,
                max_retries=entry.max_retries,
                # Set explicitly, so an Authorization line in OPENAI_CUSTOM_HEADERS is dropped by the client.
                default_headers={"Authorization": f"Bearer {secret or 'no-key'}"},
                http_client=self._http,
            )
            self._clients[key] = client
        return client

    def describe(self, tool: ToolSpec) -> dict[str, Any]:
        backend = _model_backend(tool)
        return {"type": "model", "model": backend.model, "operation": backend.operation}

    async def call(self, tool: ToolSpec, arguments: Mapping[str, Any], call: BackendCall) -> Answer:
        """Call the tool's model, failing over along its approved fallbacks.

        Raises:
            InvalidArgumentsError: a caller-set knob has the wrong type.
            UpstreamError: the endpoint refused the request (4xx); no fail-over.
            ModelUnavailableError: every approved model in the chain is down or failed.
        """
        backend = _model_backend(tool)
        inventory, request_id, progress = call.inventory, call.request_id, call.progress
        prompt = render_prompt(backend.prompt, arguments)
        attempts: list[dict[str, str]] = []
        for entry in inventory.chain(backend.model, tool.catalog):
            knobs = _knobs(backend, arguments, entry.max_tokens)
            breaker = self.breaker(entry.name, inventory.breaker)
            if not breaker.allow():
                attempts.append({"model": entry.name, "error": "circuit open"})
                continue
            # One CLIENT span per request to an endpoint, fallbacks included.
            with model_span(backend.operation, entry.served_model, _span_attributes(entry)) as span:
                try:
                    with map_openai_errors(entry.name), anyio.fail_after(entry.timeout):
                        result, usage = await self._once(entry, backend, prompt, knobs, request_id, progress)
                except ModelEndpointError as exc:
                    fail_span(span, exc.code)
                    breaker.failure()
                    attempts.append({"model": entry.name, "error": str(exc)})
                    continue
                except UpstreamError as exc:
                    fail_span(span, exc.code)
                    breaker.success()  # the endpoint answered; the request was at fault
                    raise
                except BaseException:
                    breaker.release()
                    raise
                record_usage(span, usage)
            breaker.success()
            detail: dict[str, Any] = {
                "model": backend.model,
                "served_by": entry.name,
                "provider": entry.provider,
                "served_model": entry.served_model,
                "version": entry.version,
                "operation": backend.operation,
                "streamed": progress is not None and backend.operation != "embeddings",
                "usage": usage,
            }
            if attempts:
                detail["failed_over"] = attempts
            return Answer(result, detail)
        tried = "; ".join(f"{item['model']}: {item['error']}" for item in attempts) or "none approved"
        raise ModelUnavailableError(f"{tool.name}: no approved model answered ({tried})")

    async def _once(
        self,
        entry: ModelEntry,
        backend: ModelBackend,
        prompt: str,
        knobs: dict[str, Any],
        request_id: str,
        progress: ProgressFn | None,
    ) -> tuple[types.CallToolResult, dict[str, int] | None]:
        client = self._client(entry)
        headers = {"X-Request-Id": request_id}
        inject_traceparent(headers)  # the model span's; MODEL_HEADERS lets traceparent (not tracestate) through
        if backend.operation == "embeddings":
            embedded = await client.embeddings.create(model=entry.served_model, input=prompt, extra_headers=headers)
            if not embedded.data:
                raise ModelEndpointError(f"{entry.name}: malformed answer: no embedding")
            vector = list(embedded.data[0].embedding)
            structured = {"embedding": vector, "dimensions": len(vector), "model": entry.name}
            return _result(json.dumps(structured), structured), _usage(embedded.usage)
        stream = progress is not None
        options: Any = {"include_usage": True} if stream else omit
        sampling: dict[str, Any] = {name: knobs.get(name, omit) for name in _SAMPLING}
        # Everything but the input is the same for both operations: the served model, our headers, the clamped
        # token cap and the caller-settable knobs the catalog allows (omitted when not given).
        request: dict[str, Any] = {
            "model": entry.served_model,
            "extra_headers": headers,
            "stream": stream,
            "stream_options": options,
            "max_tokens": knobs["max_tokens"],
            **sampling,
        }
        if backend.operation == "chat":
            messages: list[ChatCompletionMessageParam] = []
            if backend.system_prompt:
                messages.append({"role": "system", "content": backend.system_prompt})
            messages.append({"role": "user", "content": prompt})
            chat = await client.chat.completions.create(messages=messages, **request)
            if isinstance(chat, ChatCompletion):
                if not chat.choices:
                    raise ModelEndpointError(f"{entry.name}: malformed answer: no choices")
                choice = chat.choices[0]
                return _text_result(entry, choice.message.content or "", choice.finish_reason, _usage(chat.usage))
            answer: Any = chat
        else:
            completion = await client.completions.create(prompt=prompt, **request)
            if isinstance(completion, Completion):
                if not completion.choices:
                    raise ModelEndpointError(f"{entry.name}: malformed answer: no choices")
                first = completion.choices[0]
                return _text_result(entry, first.text, first.finish_reason, _usage(completion.usage))
            answer = completion
        assert progress is not None  # noqa: S101 - a stream is asked for only with a progress callback
        return await _consume(entry, answer, progress, float(knobs["max_tokens"]))


async def _consume(
    entry: ModelEntry, stream: Any, progress: ProgressFn, total: float
) -> tuple[types.CallToolResult, dict[str, int] | None]:
    """Read a streamed answer, reporting each piece of text as an MCP progress notification."""
    parts: list[str] = []
    usage: dict[str, int] | None = None
    finish: str | None = None
    pieces = 0
    try:
        async for chunk in stream:
            if chunk.usage is not None:
                usage = _usage(chunk.usage)
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            delta = getattr(choice, "delta", None)
            text = (delta.content if delta is not None else getattr(choice, "text", None)) or ""
            finish = choice.finish_reason or finish
            if text:
                parts.append(text)
                pieces += 1
                await progress(float(pieces), total, text)
    finally:
        await stream.close()
    return _text_result(entry, "".join(parts), finish, usage)


def _model_backend(tool: ToolSpec) -> ModelBackend:
    if not isinstance(tool.backend, ModelBackend):
        raise TypeError(f"{tool.name} is not a model tool")
    return tool.backend


def _text_result(
    entry: ModelEntry, text: str, finish: str | None, usage: dict[str, int] | None
) -> tuple[types.CallToolResult, dict[str, int] | None]:
    structured: dict[str, Any] = {"text": text, "model": entry.name, "finish_reason": finish, "usage": usage}
    return _result(text, structured), usage


def _result(text: str, structured: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured)
