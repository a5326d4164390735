"""Model tools against a scripted OpenAI-compatible server on 127.0.0.1: routing, limits, faults, breakers.

The real engine (llama.cpp with Gemma) is in tests/test_llama.py; here are the failures a real engine will not
produce on demand: 500s, malformed JSON, hanging answers and streams, redirects.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from mcp.client import Client
from mcp.client._memory import InMemoryTransport

from mcp_gateway.backends.model import render_prompt
from mcp_gateway.catalog import load_catalogs
from mcp_gateway.config import EgressSettings
from mcp_gateway.errors import ConfigError
from mcp_gateway.gateway import Gateway
from mcp_gateway.transports.handlers import build_server
from tests.fault_model import REPLY, FaultServer, running_fault_server
from tests.model_setup import ALICE, build, close, model, model_tool, write_deployment
from tests.test_upstream import RawServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[RawServer]:
    """Somewhere no model request may ever reach: redirect targets and proxies point here."""
    with RawServer() as server:
        yield server


@pytest.fixture(scope="module")
def fault(elsewhere: RawServer) -> Iterator[FaultServer]:
    with running_fault_server(redirect_to=elsewhere.url) as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def gateway(tmp_path: Path, fault: FaultServer, clock: Clock) -> AsyncIterator[Gateway]:
    url = fault.base_url
    models = [
        model("primary", url, "ok", fallback="backup"),
        model("backup", url, "ok"),
        model("crashing", url, "fail-500", fallback="backup"),
        model("garbled", url, "malformed", fallback="backup"),
        model("empty", url, "no-choices", fallback="backup"),
        model("hanging", url, "hang", timeout=0.5, fallback="backup"),
        model("stalling", url, "hang-stream", timeout=0.5, fallback="backup"),
        model("refusing", url, "fail-400", fallback="backup"),
        model("moving", url, "redirect", fallback="backup"),
        model("lonely", url, "fail-500"),
        model("retrying", url, "fail-500", max_retries=1),
        model("withdrawn", url, "ok", approved=False),
        model("keyed", url, "ok", credential_env="TEST_ENGINE_KEY"),
        model("vectors", url, "ok"),
        model("capped", url, "ok", max_tokens=5),
    ]
    tools = [model_tool(f"llm.{entry['name']}", entry["name"]) for entry in models if entry["approved"]]
    tools.append(model_tool("llm.embed", "vectors", operation="embeddings", system_prompt=None, parameters=[]))
    tools.append(model_tool("llm.complete", "primary", operation="completion", system_prompt=None))
    config = write_deployment(tmp_path, models, tools, allow=[fault.url], breaker={"failures": 1, "reset_after": 30})
    gateway = build(config, clock)
    yield gateway
    await close(gateway)


async def call(gateway: Gateway, tool: str, **arguments: Any) -> Any:
    arguments.setdefault("text", "the quarterly report")
    return await gateway.call_tool(ALICE, tool, arguments, "req-1")


def last_row(gateway: Gateway) -> dict[str, Any]:
    """The last call row (the MCP client also lists tools, which writes rows of its own)."""
    row = [item for item in gateway.audit.iter_rows() if item["event"].startswith("tools/call")][-1]
    row["detail"] = json.loads(row["detail"]) if row["detail"] else None
    return row


def error_code(result: Any) -> str:
    assert result.is_error
    return str(result.structured_content["error"]["code"])


# --- The happy path, and what the audit row says ----------------------------------------------------------------


async def test_chat_tool_answers_and_the_audit_row_carries_token_usage(gateway: Gateway, fault: FaultServer) -> None:
    result = await call(gateway, "llm.primary")

    assert not result.is_error
    assert result.structured_content["text"] == REPLY
    row = last_row(gateway)
    assert row["event"] == "tools/call.result"
    assert row["outcome"] == "ok"
    assert row["detail"]["served_by"] == "primary"
    assert row["detail"]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    body = fault.seen[-1].body
    assert body["messages"] == [
        {"role": "system", "content": "You summarise."},
        {"role": "user", "content": "Summarise: the quarterly report"},
    ]
    assert body["model"] == "ok"


async def test_completion_and_embeddings_operations(gateway: Gateway, fault: FaultServer) -> None:
    completion = await call(gateway, "llm.complete")
    assert completion.structured_content["text"] == REPLY
    assert fault.seen[-1].path == "/v1/completions"
    assert fault.seen[-1].body["prompt"] == "Summarise: the quarterly report"

    embedded = await call(gateway, "llm.embed")
    assert embedded.structured_content["embedding"] == [0.25, -0.5, 1.0]
    assert fault.seen[-1].path == "/v1/embeddings"
    assert last_row(gateway)["detail"]["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


def test_prompt_arguments_are_substituted_once() -> None:
    # An argument that looks like a placeholder is text, never expanded again.
    assert render_prompt("Summarise: {text} ({lang})", {"text": "{lang}", "lang": "en"}) == "Summarise: {lang} (en)"
    assert render_prompt("n={n}", {"n": [1, "x"]}) == 'n=[1, "x"]'


# --- Caller knobs: allowlisted, typed, clamped --------------------------------------------------------------------


async def test_max_tokens_is_clamped_to_the_models_cap(gateway: Gateway, fault: FaultServer) -> None:
    await call(gateway, "llm.capped", max_tokens=100_000)
    assert fault.seen[-1].body["max_tokens"] == 5

    await call(gateway, "llm.capped")
    assert fault.seen[-1].body["max_tokens"] == 5  # the cap applies when the caller says nothing, too

    await call(gateway, "llm.capped", max_tokens=2, temperature=9.5, stop=["a", "b", "c", "d", "e"])
    body = fault.seen[-1].body
    assert (body["max_tokens"], body["temperature"], body["stop"]) == (2, 2.0, ["a", "b", "c", "d"])


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param({"max_tokens": 2.5}, id="fractional-max-tokens"),
        pytest.param({"temperature": True}, id="boolean-temperature"),
        pytest.param({"stop": [1, 2]}, id="non-text-stop"),
    ],
)
async def test_badly_typed_knobs_are_refused_before_the_model(
    gateway: Gateway, fault: FaultServer, arguments: dict[str, Any]
) -> None:
    before = len(fault.seen)
    result = await call(gateway, "llm.primary", **arguments)
    assert error_code(result) == "invalid_arguments"
    assert len(fault.seen) == before


async def test_callers_cannot_reach_endpoint_settings(gateway: Gateway, fault: FaultServer) -> None:
    before = len(fault.seen)
    for extra in ({"model": "fail-500"}, {"base_url": "http://evil"}, {"extra_body": {"n": 50}}):
        result = await call(gateway, "llm.primary", **extra)
        assert error_code(result) == "invalid_arguments"  # the schema has no such property
    assert len(fault.seen) == before


# --- Faults: fail over, open the breaker, then give up with `unavailable` -------------------------------------------


@pytest.mark.parametrize(
    ("tool", "why"),
    [
        pytest.param("llm.crashing", "HTTP 500", id="http-500"),
        pytest.param("llm.garbled", "malformed", id="malformed-json"),
        pytest.param("llm.empty", "no choices", id="no-choices"),
        pytest.param("llm.hanging", "timed out", id="hanging-answer"),
        pytest.param("llm.moving", "HTTP 307", id="redirect"),
    ],
)
async def test_failing_endpoint_fails_over_to_its_fallback(
    gateway: Gateway, fault: FaultServer, elsewhere: RawServer, tool: str, why: str
) -> None:
    result = await call(gateway, tool)

    assert not result.is_error
    assert result.structured_content["model"] == "backup"
    detail = last_row(gateway)["detail"]
    assert detail["served_by"] == "backup"
    assert why in detail["failed_over"][0]["error"]
    assert elsewhere.connections == 0  # a redirect is never followed


async def test_hanging_stream_fails_over_within_the_deadline(gateway: Gateway) -> None:
    messages: list[str | None] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        messages.append(message)

    result = await gateway.call_tool(ALICE, "llm.stalling", {"text": "x"}, "req-2", progress)

    assert result.structured_content["model"] == "backup"
    assert "timed out" in last_row(gateway)["detail"]["failed_over"][0]["error"]
    assert messages[0] == "scripted "  # the stalled stream's first piece, then the backup's whole answer
    assert "".join(str(item) for item in messages[1:]) == REPLY


async def test_open_breaker_skips_the_endpoint_until_its_reset_time(
    gateway: Gateway, fault: FaultServer, clock: Clock
) -> None:
    before = len(fault.bodies("fail-500"))
    await call(gateway, "llm.crashing")
    assert len(fault.bodies("fail-500")) == before + 1

    await call(gateway, "llm.crashing")  # open: the endpoint is not touched
    assert len(fault.bodies("fail-500")) == before + 1
    assert last_row(gateway)["detail"]["failed_over"] == [{"model": "crashing", "error": "circuit open"}]

    clock.now += 29  # still open just before reset_after
    await call(gateway, "llm.crashing")
    assert len(fault.bodies("fail-500")) == before + 1

    clock.now += 2  # half-open: one trial call reaches it, fails, and the circuit opens again
    await call(gateway, "llm.crashing")
    assert len(fault.bodies("fail-500")) == before + 2
    await call(gateway, "llm.crashing")
    assert len(fault.bodies("fail-500")) == before + 2


async def test_no_model_left_is_unavailable_and_audited(gateway: Gateway, clock: Clock) -> None:
    result = await call(gateway, "llm.lonely")
    assert error_code(result) == "unavailable"
    assert "engine crashed" not in str(result.content)  # nothing of the engine's answer reaches the caller
    row = last_row(gateway)
    assert (row["event"], row["outcome"]) == ("tools/call.result", "unavailable")
    assert "HTTP 500" in row["detail"]["error"]

    again = await call(gateway, "llm.lonely")
    assert error_code(again) == "unavailable"
    assert "circuit open" in last_row(gateway)["detail"]["error"]


async def test_request_refused_by_the_engine_does_not_fail_over(gateway: Gateway, fault: FaultServer) -> None:
    result = await call(gateway, "llm.refusing")
    assert error_code(result) == "upstream_failed"
    assert "HTTP 400" in last_row(gateway)["detail"]["error"]

    before = len(fault.bodies("fail-400"))
    await call(gateway, "llm.refusing")
    assert len(fault.bodies("fail-400")) == before + 1  # a 4xx does not open the breaker


async def test_retries_are_bounded(gateway: Gateway, fault: FaultServer) -> None:
    before = len(fault.bodies("fail-500"))
    await call(gateway, "llm.retrying")
    assert len(fault.bodies("fail-500")) == before + 2  # one try and max_retries=1 retry


# --- Credentials and the environment ----------------------------------------------------------------------------


async def test_missing_engine_credential_is_unavailable(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_ENGINE_KEY", raising=False)
    result = await call(gateway, "llm.keyed")
    assert error_code(result) == "unavailable"
    assert "TEST_ENGINE_KEY is not set" in last_row(gateway)["detail"]["error"]


async def test_openai_environment_variables_never_reach_the_engine(
    tmp_path: Path, fault: FaultServer, elsewhere: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The OpenAI client reads these on its own even when given explicit values (pinned in docs/architecture.md).
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    monkeypatch.setenv("OPENAI_BASE_URL", elsewhere.url)
    monkeypatch.setenv("OPENAI_ORG_ID", "org-env")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-env")
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "Authorization: Bearer from-env\nX-Leak: yes")
    monkeypatch.setenv("HTTP_PROXY", elsewhere.url)
    monkeypatch.setenv("ALL_PROXY", elsewhere.url)
    monkeypatch.setenv("TEST_ENGINE_KEY", "server-side-secret")
    models = [model("keyed", fault.base_url, "ok", credential_env="TEST_ENGINE_KEY")]
    config = write_deployment(tmp_path, models, [model_tool("llm.keyed", "keyed")], allow=[fault.url])
    gateway = build(config)
    try:
        result = await call(gateway, "llm.keyed")
    finally:
        await close(gateway)

    assert not result.is_error
    headers = fault.seen[-1].headers
    assert headers["authorization"] == "Bearer server-side-secret"
    assert not {"x-leak", "openai-organization", "openai-project"} & set(headers)
    assert not [name for name in headers if name.startswith("x-stainless")]
    assert elsewhere.connections == 0


def test_openai_client_runs_on_httpx2() -> None:
    # The model stack is httpx2, not httpx: the egress guard must cover both (egress.py builds both).
    import inspect

    annotation = str(inspect.signature(openai.AsyncOpenAI).parameters["http_client"].annotation)
    assert "httpx2.AsyncClient" in annotation
    default = openai.AsyncOpenAI(api_key="x", base_url="http://127.0.0.1:9/v1")
    assert isinstance(default._client, httpx2.AsyncClient)
    # It does not refuse an httpx (v1) client handed to it: only the type annotation says httpx2.


# --- Through the real MCP client: progress notifications ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_progress_token_streams_the_answer_as_progress_notifications(gateway: Gateway, mode: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    # JSON-RPC framing over memory streams: the progressToken travels in _meta as on any real transport.
    async with Client(InMemoryTransport(build_server(gateway, lambda: ALICE)), mode=mode) as client:
        quiet = await client.call_tool("llm.primary", {"text": "a"})
        assert seen == []  # no progressToken, no stream
        assert last_row(gateway)["detail"]["streamed"] is False

        result = await client.call_tool("llm.primary", {"text": "a"}, progress_callback=on_progress)

    assert quiet.structured_content is not None
    assert quiet.structured_content["text"] == REPLY
    assert result.structured_content is not None
    assert result.structured_content["text"] == REPLY
    assert [item[2] for item in seen] == ["scripted ", "rep", "ly"]
    assert [item[0] for item in seen] == [1.0, 2.0, 3.0]
    assert {item[1] for item in seen} == {16.0}
    detail = last_row(gateway)["detail"]
    assert detail["streamed"] is True
    assert detail["usage"]["completion_tokens"] == 3


async def test_direct_in_process_dispatch_carries_no_progress_token(gateway: Gateway) -> None:
    # SDK surprise: Client(server) without a transport calls the handler directly, and the request context then
    # holds no progressToken even when the client passed a progress callback. The gateway does not stream there.
    seen: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message)

    async with Client(build_server(gateway, lambda: ALICE)) as client:
        result = await client.call_tool("llm.primary", {"text": "a"}, progress_callback=on_progress)
    assert result.structured_content is not None
    assert result.structured_content["text"] == REPLY
    assert seen == []
    assert last_row(gateway)["detail"]["streamed"] is False


# --- Configuration refusals ---------------------------------------------------------------------------------------


def inventory_error(tmp_path: Path, models: list[dict[str, Any]], tools: list[dict[str, Any]], allow: list[str]) -> str:
    write_deployment(tmp_path, models, tools, allow=allow)
    with pytest.raises(ConfigError) as caught:
        load_catalogs(tmp_path / "catalogs", EgressSettings(allow=tuple(allow)))
    return str(caught.value)


URL = "http://127.0.0.1:9/v1"
ALLOW = ["http://127.0.0.1:9"]


@pytest.mark.parametrize(
    ("models", "tools", "allow", "expected"),
    [
        pytest.param([], [model_tool("llm.x", "ghost")], ALLOW, "'ghost' is not in models.yaml", id="unknown-model"),
        pytest.param(
            [model("m", URL, "s", approved=False)],
            [model_tool("llm.x", "m")],
            ALLOW,
            "'m' is not approved in models.yaml",
            id="unapproved-model",
        ),
        pytest.param(
            [model("m", URL, "s", catalogs=["partner"])],
            [model_tool("llm.x", "m")],
            ALLOW,
            "not approved for catalog 'internal'",
            id="model-not-for-this-catalog",
        ),
        pytest.param(
            [model("m", "http://10.9.9.9:8000/v1", "s")],
            [],
            ALLOW,
            "models.0.base_url: 'http://10.9.9.9:8000/v1' is not on egress.allow",
            id="endpoint-off-allowlist",
        ),
        pytest.param(
            [model("m", URL, "s", fallback="nobody")], [], ALLOW, "'nobody' names no model", id="unknown-fallback"
        ),
        pytest.param(
            [model("a", URL, "s", fallback="b"), model("b", URL, "s", fallback="a")],
            [],
            ALLOW,
            "loops",
            id="fallback-loop",
        ),
        pytest.param(
            [model("m", URL, "s"), model("m", URL, "s")], [], ALLOW, "'m' is defined twice", id="duplicate-model"
        ),
        pytest.param([model("m", URL, "s", sha256="ABC")], [], ALLOW, "models.0.sha256", id="bad-sha256"),
        pytest.param(
            [model("m", "http://user:pw@127.0.0.1:9/v1", "s")], [], ALLOW, "models.0.base_url", id="credentials-in-url"
        ),
        pytest.param(
            [model("m", URL, "s")],
            [model_tool("llm.x", "m", parameters=["logit_bias"])],
            ALLOW,
            "not caller-settable",
            id="engine-knob-as-parameter",
        ),
        pytest.param(
            [model("m", URL, "s")],
            [model_tool("llm.x", "m", prompt="Use {missing}")],
            ALLOW,
            "missing",
            id="prompt-argument-not-in-schema",
        ),
        pytest.param(
            [model("m", URL, "s")],
            [model_tool("llm.x", "m", unexpected=1)],
            ALLOW,
            "tools.0.backend.unexpected",
            id="unknown-backend-key",
        ),
    ],
)
def test_bad_inventory_or_model_tool_is_refused(
    tmp_path: Path, models: list[dict[str, Any]], tools: list[dict[str, Any]], allow: list[str], expected: str
) -> None:
    tools = tools or [
        {
            "name": "x",
            "description": "d",
            "input_schema": {"type": "object"},
            "backend": {"type": "http", "url": "http://127.0.0.1:9/x"},
        }
    ]
    assert expected in inventory_error(tmp_path, models, tools, allow)


def test_model_tool_digest_changes_when_its_model_entry_changes(tmp_path: Path) -> None:
    digests = []
    for version in ("1", "2"):
        folder = tmp_path / version
        write_deployment(folder, [model("m", URL, "s", version=version)], [model_tool("llm.x", "m")], allow=ALLOW)
        catalogs = load_catalogs(folder / "catalogs", EgressSettings(allow=tuple(ALLOW)))
        tool = catalogs.lookup("internal", "llm.x")
        assert tool is not None
        digests.append(tool.digest)
    assert digests[0] != digests[1]
