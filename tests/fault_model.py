"""A scripted OpenAI-compatible server on 127.0.0.1 for the fault cases a real engine will not produce on demand.

It speaks the real wire protocol (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, JSON and
server-sent events) and picks its behaviour from the request's ``model`` field:

``ok``            a normal answer (streamed when asked), with usage
``fail-500``      HTTP 500 with an OpenAI-style error body
``fail-400``      HTTP 400 (the request's own fault)
``malformed``     HTTP 200 with a truncated JSON body
``hang``          never answers within any test timeout (bounded, and ends when the client goes away)
``hang-stream``   streams one chunk, then hangs
``redirect``      302 to ``redirect_to``
``no-choices``    HTTP 200, valid JSON, no choices

Every request is recorded (path, headers, parsed body), so tests can assert what left the gateway.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

REPLY = "scripted reply"


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FaultServer:
    url: str
    stop: threading.Event
    redirect_to: str = ""
    seen: list[Seen] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def bodies(self, model: str) -> list[dict[str, Any]]:
        return [item.body for item in self.seen if item.body.get("model") == model]


def _usage(completion_tokens: int = 3) -> dict[str, int]:
    return {"prompt_tokens": 5, "completion_tokens": completion_tokens, "total_tokens": 5 + completion_tokens}


def _answer(path: str, model: str) -> dict[str, Any]:
    if path.endswith("/embeddings"):
        return {
            "object": "list",
            "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}],
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        }
    if path.endswith("/chat/completions"):
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": REPLY},
            "finish_reason": "stop",
        }
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": REPLY, "finish_reason": "stop", "logprobs": None}
        kind = "text_completion"
    return {"id": "x-1", "object": kind, "created": 1, "model": model, "choices": [choice], "usage": _usage()}


def _chunk(path: str, model: str, text: str | None, usage: bool = False) -> bytes:
    chat = path.endswith("/chat/completions")
    choices: list[dict[str, Any]] = []
    if text is not None:
        piece: dict[str, Any] = {"delta": {"content": text}} if chat else {"text": text}
        choices = [{"index": 0, "finish_reason": None, **piece}]
    data: dict[str, Any] = {
        "id": "x-1",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": 1,
        "model": model,
        "choices": choices,
    }
    if usage:
        data["usage"] = _usage(3)
    return f"data: {json.dumps(data)}\n\n".encode()


async def _stream(path: str, model: str, state: FaultServer, hang: bool) -> AsyncIterator[bytes]:
    for word in ("scripted ", "rep", "ly"):
        yield _chunk(path, model, word)
        if hang:
            for _ in range(200):
                if state.stop.is_set():
                    return
                await asyncio.sleep(0.05)
    yield _chunk(path, model, None, usage=True)
    yield b"data: [DONE]\n\n"


def fault_app(state: FaultServer) -> ASGIApp:
    async def endpoint(request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = {}
        path = request.url.path
        state.seen.append(Seen(path, {k.lower(): v for k, v in request.headers.items()}, body))
        model = str(body.get("model", ""))
        if model == "fail-500":
            return JSONResponse({"error": {"message": "engine crashed", "type": "server_error"}}, status_code=500)
        if model == "fail-400":
            return JSONResponse({"error": {"message": "context too long", "type": "invalid_request"}}, status_code=400)
        if model == "malformed":
            return Response(b'{"id": "x-1", "choices": [', media_type="application/json")
        if model == "no-choices":
            return JSONResponse({"id": "x-1", "object": "chat.completion", "created": 1, "model": model, "choices": []})
        if model == "redirect":
            return RedirectResponse(f"{state.redirect_to}{path}", status_code=307)
        if model == "hang":
            for _ in range(200):
                if state.stop.is_set() or await request.is_disconnected():
                    break
                await asyncio.sleep(0.05)
            return JSONResponse(_answer(path, model))
        if body.get("stream"):
            return StreamingResponse(
                _stream(path, model, state, model == "hang-stream"), media_type="text/event-stream"
            )
        return JSONResponse(_answer(path, model))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await endpoint(Request(scope, receive))
        await response(scope, receive, send)

    return app


@contextmanager
def running_fault_server(redirect_to: str = "") -> Iterator[FaultServer]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    state = FaultServer(
        url=f"http://127.0.0.1:{sock.getsockname()[1]}", stop=threading.Event(), redirect_to=redirect_to
    )
    config = uvicorn.Config(
        fault_app(state), http="h11", ws="none", lifespan="off", log_level="critical", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started, "the fault server did not start"
    try:
        yield state
    finally:
        state.stop.set()
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
