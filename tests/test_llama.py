"""Model tools against a REAL engine: llama.cpp's OpenAI-compatible server with Gemma 3 270M on 127.0.0.1.

Gemma 270M is a base model: these tests check plumbing (routing, streaming, usage, caps, fail-over, errors),
never the quality of an answer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client
from mcp.client._memory import InMemoryTransport

from mcp_gateway.audit.log import new_request_id
from mcp_gateway.config import EgressSettings
from mcp_gateway.gateway import Gateway
from mcp_gateway.inventory import import_weights, load_inventory, verify_weights
from mcp_gateway.transports.handlers import build_server
from tests.conftest import LlamaServer, free_port
from tests.model_setup import ALICE, build, close, model, model_tool, write_deployment

CAP = 8


@pytest.fixture
async def gateway(tmp_path: Path, llama_server: LlamaServer) -> AsyncIterator[Gateway]:
    dead = f"http://127.0.0.1:{free_port()}"
    models = [
        model("gemma", llama_server.base_url, llama_server.model_id, provider="llamacpp", max_tokens=CAP, timeout=60),
        model("gone", f"{dead}/v1", "x", provider="vllm", fallback="gemma"),
    ]
    tools = [
        model_tool("llm.summarise", "gemma"),
        model_tool("llm.complete", "gemma", operation="completion", system_prompt=None),
        model_tool("llm.failover", "gone"),
    ]
    config = write_deployment(tmp_path, models, tools, allow=[llama_server.url, dead])
    gateway = build(config)
    yield gateway
    await close(gateway)


def last_call(gateway: Gateway) -> dict[str, Any]:
    row = [item for item in gateway.audit.iter_rows() if item["event"] == "tools/call.result"][-1]
    row["detail"] = json.loads(row["detail"])
    return row


async def test_chat_through_the_gateway_records_real_token_usage(gateway: Gateway, llama_server: LlamaServer) -> None:
    result = await gateway.call_tool(ALICE, "llm.summarise", {"text": "The cat sat on the mat."}, new_request_id())

    assert not result.is_error, result.content
    assert isinstance(result.structured_content["text"], str)
    detail = last_call(gateway)["detail"]
    assert detail["served_by"] == "gemma"
    assert detail["served_model"] == llama_server.model_id
    usage = detail["usage"]
    assert usage["prompt_tokens"] > 5
    assert 0 < usage["completion_tokens"] <= CAP
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_caller_max_tokens_is_clamped_by_the_real_engine(gateway: Gateway) -> None:
    await gateway.call_tool(ALICE, "llm.complete", {"text": "Once upon a time", "max_tokens": 10_000}, new_request_id())
    assert last_call(gateway)["detail"]["usage"]["completion_tokens"] <= CAP

    await gateway.call_tool(ALICE, "llm.complete", {"text": "Once upon a time", "max_tokens": 2}, new_request_id())
    assert last_call(gateway)["detail"]["usage"]["completion_tokens"] <= 2


async def test_dead_endpoint_fails_over_to_the_real_model(gateway: Gateway) -> None:
    result = await gateway.call_tool(ALICE, "llm.failover", {"text": "hello"}, new_request_id())

    assert not result.is_error
    detail = last_call(gateway)["detail"]
    assert detail["served_by"] == "gemma"
    assert "connection failed" in detail["failed_over"][0]["error"]


async def test_streamed_answer_arrives_as_progress_notifications(gateway: Gateway) -> None:
    pieces: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        assert total == float(CAP)
        pieces.append(message or "")

    async with Client(InMemoryTransport(build_server(gateway, lambda: ALICE)), mode="2026-07-28") as client:
        result = await client.call_tool("llm.summarise", {"text": "Tell a story."}, progress_callback=on_progress)

    assert result.structured_content is not None
    assert pieces, "no progress notification arrived"
    assert "".join(pieces) == result.structured_content["text"]
    detail = last_call(gateway)["detail"]
    assert detail["streamed"] is True
    # llama-cpp-python ignores stream_options.include_usage: a streamed call has no usage to record.
    assert detail["usage"] is None


def test_weights_verify_and_import_against_the_real_gguf(tmp_path: Path, llama_server: LlamaServer) -> None:
    models = [model("gemma", llama_server.base_url, "g", sha256=llama_server.sha256, weights="gemma.gguf")]
    write_deployment(tmp_path, models, [], allow=[llama_server.url], artifacts_dir="artifacts")
    inventory = load_inventory(tmp_path / "catalogs" / "models.yaml", EgressSettings(allow=(llama_server.url,)))

    assert [check.status for check in verify_weights(inventory)] == ["missing"]
    seen: list[int] = []
    placed = import_weights(inventory, "gemma", llama_server.gguf, llama_server.sha256, seen.append)
    assert placed == tmp_path / "catalogs" / "artifacts" / "gemma.gguf"
    assert sum(seen) == llama_server.gguf.stat().st_size
    assert [check.status for check in verify_weights(inventory)] == ["ok"]


async def test_llama_cpp_refuses_a_request_id_that_is_not_a_uuid(gateway: Gateway) -> None:
    # llama-cpp-python's server validates X-Request-Id as a UUID and answers 400 otherwise. The gateway's request
    # ids are UUIDs (new_request_id), and must stay so; a 400 is the request's fault, so no fail-over happens.
    result = await gateway.call_tool(ALICE, "llm.summarise", {"text": "hi"}, "not-a-uuid")
    assert result.is_error
    assert "HTTP 400" in last_call(gateway)["detail"]["error"]
