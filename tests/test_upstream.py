"""REST backends: ``HttpUpstream.call`` against a real, hostile upstream on 127.0.0.1.

The upstream is an ASGI app built from Starlette requests and responses, run by uvicorn in a background thread;
it records every request it sees. Wire-level lies a well-behaved ASGI server will not tell (bodies without
framing, conflicting lengths) and the places that must never be reached (redirect targets, proxies, origins off
the allowlist) are raw TCP servers that count the connections they accept.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import socketserver
import string
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import anyio
import mcp_types as types
import pytest
import uvicorn
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_gateway.backends import BackendCall
from mcp_gateway.backends.http import REQUEST_ID_HEADER, HttpUpstream
from mcp_gateway.catalog import HttpBackend, ToolSpec, load_catalogs
from mcp_gateway.config import EgressSettings
from mcp_gateway.egress import EgressDeniedError
from mcp_gateway.errors import (
    InvalidArgumentsError,
    UnavailableError,
    UpstreamError,
    UpstreamPoolTimeoutError,
    UpstreamTimeoutError,
)
from mcp_gateway.inventory import Inventory

CAP = 1000  # max_response_bytes for the size tests
TIMEOUT = 0.5  # the tool timeout for the deadline tests
GZIP_BOMB = gzip.compress(b"\0" * (16 * 1_048_576), compresslevel=9)  # ~16 KB on the wire, 16 MiB inflated


# --- A hostile upstream: Starlette under uvicorn --------------------------------------------------------------


@dataclass
class Seen:
    method: str
    raw_path: bytes
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    url: str
    redirect_target: str
    stop: threading.Event
    seen: list[Seen] = field(default_factory=list, repr=False)  # kept out of reports of failing examples

    def requests(self, request_id: str) -> list[Seen]:
        return [item for item in self.seen if item.headers.get("x-request-id") == request_id]


def hostile_app(state: Upstream) -> ASGIApp:
    async def endpoint(request: Request) -> Response:
        body = await request.body()
        raw_path: bytes = request.scope["raw_path"]
        state.seen.append(
            Seen(
                method=request.method,
                raw_path=raw_path,
                query=parse_qsl(request.url.query, keep_blank_values=True),
                headers={key.lower(): value for key, value in request.headers.items()},
                body=body,
            )
        )
        kind = raw_path.split(b"/")[1].decode()
        if kind == "echo":
            return JSONResponse({"raw_path": raw_path.decode(), "method": request.method})
        if kind == "list":
            return JSONResponse([1, "two", None])
        if kind == "text":
            return PlainTextResponse("plain answer")
        if kind == "latin1":
            return Response("café".encode("latin-1"), media_type="text/plain; charset=iso-8859-1")
        if kind == "binary":
            return Response(b"\x89PNG\xff\xfe\x00", media_type="application/octet-stream")
        if kind == "bad-json":
            return Response(b'{"truncated": ', media_type="application/json")
        if kind == "status":
            return JSONResponse({"error": "boom"}, status_code=int(raw_path.split(b"/")[2]))
        if kind == "redirect":
            return RedirectResponse(f"{state.redirect_target}/landed", status_code=302)
        if kind == "big":
            return PlainTextResponse("x" * (CAP * 5))
        if kind == "chunked":
            return StreamingResponse(_chunks(10, b"y" * CAP), media_type="text/plain")
        if kind == "gzip-bomb":
            return Response(GZIP_BOMB, media_type="text/plain", headers={"Content-Encoding": "gzip"})
        if kind == "hang":
            # Past any tool timeout, but bounded, and over as soon as the client gives up or the server stops.
            for _ in range(200):
                if state.stop.is_set() or await request.is_disconnected():
                    break
                await asyncio.sleep(0.05)
            return PlainTextResponse("too late")
        if kind == "drip":
            return StreamingResponse(_drip(state.stop), media_type="text/plain")
        if kind == "set-cookie":
            # Every `c` query value becomes one Set-Cookie header, as written.
            response = JSONResponse({"set": True})
            for name, value in parse_qsl(request.url.query, keep_blank_values=True):
                if name == "c":
                    response.headers.append("set-cookie", value)
            return response
        if kind in ("slow", "customers"):
            # A backend that takes its time: /slow/<ms>, or (for a gateway's own catalogs) /customers/<id> at 500 ms.
            segments = raw_path.split(b"/")
            delay = int(segments[2]) / 1000 if kind == "slow" else 0.5
            with anyio.move_on_after(delay):
                while not state.stop.is_set():
                    await asyncio.sleep(0.02)
            return JSONResponse({"path": raw_path.decode(), "waited": delay})
        return PlainTextResponse("no such route", status_code=404)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # No router: Starlette's path converters do not match decoded control characters, and every path counts.
        response = await endpoint(Request(scope, receive))
        await response(scope, receive, send)

    return app


async def _chunks(count: int, chunk: bytes) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield chunk


async def _drip(stop: threading.Event) -> AsyncIterator[bytes]:
    # One byte every 50 ms: each read is quick, the whole answer never ends (bounded at 10 s).
    for _ in range(200):
        if stop.is_set():
            return
        yield b"."
        await asyncio.sleep(0.05)


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def recorder() -> Iterator[RawServer]:
    """Somewhere that must never be reached: the redirect target."""
    with RawServer() as server:
        yield server


@pytest.fixture(scope="module")
def upstream(recorder: RawServer) -> Iterator[Upstream]:
    sock = _listening_socket()
    port = sock.getsockname()[1]
    state = Upstream(url=f"http://127.0.0.1:{port}", redirect_target=recorder.url, stop=threading.Event())
    config = uvicorn.Config(
        hostile_app(state),
        http="h11",
        ws="none",
        lifespan="off",
        log_level="critical",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started, "the upstream did not start"
    try:
        yield state
    finally:
        state.stop.set()
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


# --- Raw TCP servers: scripted replies, counted connections ---------------------------------------------------


class RawServer:
    """Accepts connections on 127.0.0.1, counts them, and answers each with a scripted reply by path."""

    DEFAULT = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\nConnection: close\r\n\r\nrecorded"

    def __init__(self, replies: dict[str, bytes] | None = None, *, delay: float = 0.0) -> None:
        self.replies = replies or {}
        self.connections = 0
        self.peak = 0  # most connections open at once
        self._open = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with outer._lock:
                    outer.connections += 1
                    outer._open += 1
                    outer.peak = max(outer.peak, outer._open)
                try:
                    self._answer()
                finally:
                    with outer._lock:
                        outer._open -= 1

            def _answer(self) -> None:
                self.request.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    data = self.request.recv(4096)
                    if not data:
                        return
                    head += data
                time.sleep(delay)  # a backend that takes its time, in its own thread
                target = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else ""
                self.request.sendall(outer.replies.get(target, RawServer.DEFAULT))

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def liar() -> Iterator[RawServer]:
    body = b"z" * (CAP * 5)
    with RawServer(
        {
            # No Content-Length, no chunking: the body runs until the server closes the connection.
            "/until-close": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" + body,
            # A small Content-Length next to chunked framing; the chunked body is five times the cap.
            "/cl-and-chunked": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n",
            # Claims far more than it sends, then closes: the cap must trip on what arrived.
            "/short": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 999999\r\n"
            b"Connection: close\r\n\r\n" + body,
        }
    ) as server:
        yield server


# --- Tools and the client under test --------------------------------------------------------------------------


def make_tool(tmp_path: Path, url: str, *, allow: tuple[str, ...] = (), **backend: Any) -> ToolSpec:
    """Load a one-tool catalog whose backend is ``url`` and ``backend``; every argument it uses is declared."""
    spec = {"type": "http", "url": url, **backend}
    probe = HttpBackend(**spec)  # the arguments it uses, parsed the catalog's way
    names = {*probe.path_arguments, *probe.query.values(), *probe.body.values()}
    schema = {
        "type": "object",
        "properties": {name: {} for name in sorted(names)},
        "required": list(probe.path_arguments),
    }
    folder = tmp_path / f"catalogs-{len(list(tmp_path.glob('catalogs-*')))}"
    folder.mkdir()
    tool = {"name": "test.tool", "description": "A tool under test.", "input_schema": schema, "backend": spec}
    (folder / "internal.yaml").write_text(yaml.safe_dump({"tools": [tool]}), encoding="utf-8")
    origin = "/".join(url.split("/")[:3])
    loaded = load_catalogs(folder, EgressSettings(allow=(origin, *allow))).lookup("internal", "test.tool")
    assert loaded is not None
    return loaded


@pytest.fixture
async def client(upstream: Upstream, recorder: RawServer, liar: RawServer) -> AsyncIterator[HttpUpstream]:
    # The redirect target is on the allowlist on purpose: it must be unreachable because redirects are not
    # followed, not because egress refuses it.
    http = HttpUpstream(EgressSettings(allow=(upstream.url, recorder.url, liar.url)))
    try:
        yield http
    finally:
        await http.aclose()


_ids = iter(range(1_000_000))


async def call(http: HttpUpstream, tool: ToolSpec, arguments: dict[str, Any], rid: str) -> types.CallToolResult:
    """One REST call through the backend protocol, as the gateway makes it."""
    return (await http.call(tool, arguments, BackendCall(rid, Inventory()))).result


def request_id() -> str:
    return f"req-{next(_ids)}-{time.monotonic_ns()}"


def texts(result: types.CallToolResult) -> list[str]:
    assert all(isinstance(item, types.TextContent) for item in result.content)
    return [item.text for item in result.content if isinstance(item, types.TextContent)]


# --- Answers --------------------------------------------------------------------------------------------------


async def test_json_object_answer_becomes_structured_content(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream
) -> None:
    tool = make_tool(tmp_path, f"{upstream.url}/echo/fixed")

    result = await call(client, tool, {}, request_id())

    assert result.is_error is False
    assert result.structured_content == {"raw_path": "/echo/fixed", "method": "GET"}
    assert [json.loads(text) for text in texts(result)] == [result.structured_content]


async def test_json_array_answer_is_wrapped_as_result(tmp_path: Path, upstream: Upstream, client: HttpUpstream) -> None:
    tool = make_tool(tmp_path, f"{upstream.url}/list")

    result = await call(client, tool, {}, request_id())

    assert result.structured_content == {"result": [1, "two", None]}


async def test_text_answer_becomes_text_content_only(tmp_path: Path, upstream: Upstream, client: HttpUpstream) -> None:
    tool = make_tool(tmp_path, f"{upstream.url}/text")

    result = await call(client, tool, {}, request_id())

    assert result.structured_content is None
    assert texts(result) == ["plain answer"]


async def test_text_answer_is_decoded_with_its_declared_charset(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream
) -> None:
    tool = make_tool(tmp_path, f"{upstream.url}/latin1")

    result = await call(client, tool, {}, request_id())

    assert texts(result) == ["café"]


async def test_request_id_header_reaches_the_upstream(tmp_path: Path, upstream: Upstream, client: HttpUpstream) -> None:
    tool = make_tool(tmp_path, f"{upstream.url}/echo/id")
    rid = request_id()

    await call(client, tool, {}, rid)

    [seen] = upstream.requests(rid)
    assert seen.headers[REQUEST_ID_HEADER.lower()] == rid


# --- Path arguments: one percent-encoded segment each ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "segment"),
    [
        # characters that would change the request's target
        pytest.param("a?b=c", "a%3Fb%3Dc", id="question-mark"),
        pytest.param("a#b", "a%23b", id="hash"),
        pytest.param("a;b", "a%3Bb", id="semicolon"),
        # already-encoded input is encoded again, never decoded
        pytest.param("100%", "100%25", id="percent"),
        pytest.param("%2e%2e", "%252e%252e", id="pre-encoded-dot-dot"),
        pytest.param("a%2Fb", "a%252Fb", id="pre-encoded-slash"),
        # whitespace, control characters, unicode
        pytest.param("a b", "a%20b", id="space"),
        pytest.param("café", "caf%C3%A9", id="latin"),
        pytest.param("日本", "%E6%97%A5%E6%9C%AC", id="cjk"),
        pytest.param("\u0441rm", "%D1%81rm", id="cyrillic"),
        # dots that are not dot-segments, and scalars that are not strings
        pytest.param("...", "...", id="three-dots"),
        pytest.param(".hidden", ".hidden", id="leading-dot"),
        pytest.param(42, "42", id="int"),
        pytest.param(1.5, "1.5", id="float"),
        pytest.param(True, "true", id="bool"),
    ],
)
async def test_path_argument_is_percent_encoded_as_one_segment(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream, value: Any, segment: str
) -> None:
    tool = make_tool(tmp_path, f"{upstream.url}/echo/{{item}}/tail")
    rid = request_id()

    result = await call(client, tool, {"item": value}, rid)

    [seen] = upstream.requests(rid)
    assert seen.raw_path == f"/echo/{segment}/tail".encode()
    assert seen.query == []
    assert result.structured_content == {"raw_path": f"/echo/{segment}/tail", "method": "GET"}


@pytest.mark.parametrize(
    "value",
    [
        # separators and control characters: many backends decode %2F before routing
        pytest.param("a/b", id="slash"),
        pytest.param("../admin", id="dot-dot-slash"),
        pytest.param("a\\b", id="backslash"),
        pytest.param("a\r\nb", id="crlf"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\x7fb", id="del"),
        # dot-segments and the empty segment
        pytest.param(".", id="dot"),
        pytest.param("..", id="dot-dot"),
        pytest.param("", id="empty"),
        # not scalars
        pytest.param({"a": 1}, id="object"),
        pytest.param(["a", "b"], id="list"),
        pytest.param(None, id="null"),
    ],
)
async def test_unplaceable_path_argument_is_refused_before_any_request(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream, value: Any
) -> None:
    tool = make_tool(tmp_path, f"{upstream.url}/echo/{{item}}")
    rid = request_id()

    with pytest.raises(InvalidArgumentsError) as info:
        await call(client, tool, {"item": value}, rid)

    assert info.value.code == "invalid_arguments"
    assert info.value.public_detail is not None
    assert info.value.public_detail.startswith("item:")
    assert upstream.requests(rid) == []


# --- Query, body and headers ----------------------------------------------------------------------------------


async def test_query_mapping_sends_scalars_lists_and_skips_absent_arguments(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream
) -> None:
    tool = make_tool(
        tmp_path,
        f"{upstream.url}/echo/search",
        query={"q": "text", "tag": "tags", "active": "active", "n": "limit", "absent": "missing"},
    )
    rid = request_id()

    await call(client, tool, {"text": "a b&c=d#e", "tags": ["x", "y/z"], "active": False, "limit": 3}, rid)

    [seen] = upstream.requests(rid)
    assert seen.raw_path == b"/echo/search"
    assert sorted(seen.query) == sorted(
        [("q", "a b&c=d#e"), ("tag", "x"), ("tag", "y/z"), ("active", "false"), ("n", "3")]
    )


async def test_query_list_of_booleans_is_lower_case_like_a_single_boolean(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream
) -> None:
    tool = make_tool(tmp_path, f"{upstream.url}/echo/flags", query={"flag": "flags"})
    rid = request_id()

    await call(client, tool, {"flags": [True, False]}, rid)

    [seen] = upstream.requests(rid)
    assert seen.query == [("flag", "true"), ("flag", "false")]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"a": 1}, id="object"),
        pytest.param([{"a": 1}], id="list-of-objects"),
        pytest.param([["nested"]], id="list-of-lists"),
        pytest.param(None, id="null"),
    ],
)
async def test_non_scalar_query_argument_is_refused_before_any_request(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream, value: Any
) -> None:
    tool = make_tool(tmp_path, f"{upstream.url}/echo/search", query={"q": "text"})
    rid = request_id()

    with pytest.raises(InvalidArgumentsError) as info:
        await call(client, tool, {"text": value}, rid)

    assert info.value.code == "invalid_arguments"
    assert upstream.requests(rid) == []


async def test_body_mapping_sends_only_mapped_arguments_as_json(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream
) -> None:
    tool = make_tool(
        tmp_path,
        f"{upstream.url}/echo/tickets",
        method="POST",
        body={"customer_id": "customer", "summary": "summary", "meta": "meta", "absent": "missing"},
    )
    rid = request_id()
    arguments = {"customer": "c-1", "summary": "Printer on fire", "meta": {"tags": ["a"], "n": 1}}

    result = await call(client, tool, {**arguments, "unmapped": "never sent"}, rid)

    [seen] = upstream.requests(rid)
    assert seen.method == "POST"
    assert seen.headers["content-type"] == "application/json"
    assert json.loads(seen.body) == {
        "customer_id": "c-1",
        "summary": "Printer on fire",
        "meta": {"tags": ["a"], "n": 1},
    }
    assert result.structured_content == {"raw_path": "/echo/tickets", "method": "POST"}


async def test_static_headers_reach_the_upstream(tmp_path: Path, upstream: Upstream, client: HttpUpstream) -> None:
    tool = make_tool(tmp_path, f"{upstream.url}/echo/h", headers={"X-Team": "crm", "Accept": "application/json"})
    rid = request_id()

    await call(client, tool, {}, rid)

    [seen] = upstream.requests(rid)
    assert seen.headers["x-team"] == "crm"
    assert seen.headers["accept"] == "application/json"
    assert "authorization" not in seen.headers


# --- Credentials ----------------------------------------------------------------------------------------------


async def test_credential_from_env_reaches_the_upstream(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "env-secret")
    tool = make_tool(tmp_path, f"{upstream.url}/echo/c", credential_env="TEST_UPSTREAM_KEY")
    rid = request_id()

    await call(client, tool, {}, rid)

    [seen] = upstream.requests(rid)
    assert seen.headers["authorization"] == "Bearer env-secret"


async def test_credential_from_file_reaches_the_upstream_in_its_own_header(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream
) -> None:
    secret = tmp_path / "api-key"
    secret.write_text("file-secret\n", encoding="utf-8")
    tool = make_tool(
        tmp_path,
        f"{upstream.url}/echo/c",
        credential_file=str(secret),
        credential_header="X-Api-Key",
        credential_scheme="",
    )
    rid = request_id()

    await call(client, tool, {}, rid)

    [seen] = upstream.requests(rid)
    assert seen.headers["x-api-key"] == "file-secret"
    assert "authorization" not in seen.headers


@pytest.mark.parametrize("value", [pytest.param(None, id="unset"), pytest.param("", id="empty")])
async def test_missing_credential_env_is_unavailable_before_any_request(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("TEST_UPSTREAM_KEY", raising=False)
    else:
        monkeypatch.setenv("TEST_UPSTREAM_KEY", value)
    tool = make_tool(tmp_path, f"{upstream.url}/echo/c", credential_env="TEST_UPSTREAM_KEY")
    rid = request_id()

    with pytest.raises(UnavailableError) as info:
        await call(client, tool, {}, rid)

    assert info.value.code == "unavailable"
    assert upstream.requests(rid) == []


async def test_unreadable_credential_file_is_unavailable_before_any_request(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream
) -> None:
    tool = make_tool(tmp_path, f"{upstream.url}/echo/c", credential_file=str(tmp_path / "no-such-key"))
    rid = request_id()

    with pytest.raises(UnavailableError) as info:
        await call(client, tool, {}, rid)

    assert info.value.code == "unavailable"
    assert upstream.requests(rid) == []


# --- Deadlines ------------------------------------------------------------------------------------------------


async def test_hanging_upstream_fails_at_the_tool_timeout(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream
) -> None:
    tool = make_tool(tmp_path, f"{upstream.url}/hang", timeout=TIMEOUT)
    started = time.monotonic()

    with pytest.raises(UpstreamError) as info:
        await call(client, tool, {}, request_id())

    elapsed = time.monotonic() - started
    assert info.value.code == "upstream_failed"
    assert isinstance(info.value.__cause__, TimeoutError)
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 1.0


async def test_dripping_upstream_fails_at_the_total_deadline_not_per_read(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream
) -> None:
    # Every byte arrives well within httpx's per-read timeout; only a total deadline can stop this.
    tool = make_tool(tmp_path, f"{upstream.url}/drip", timeout=TIMEOUT)
    started = time.monotonic()

    with pytest.raises(UpstreamError) as info:
        await call(client, tool, {}, request_id())

    elapsed = time.monotonic() - started
    assert info.value.code == "upstream_failed"
    assert isinstance(info.value.__cause__, TimeoutError)
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 1.0


# --- Sizes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/big", id="content-length"),
        pytest.param("/chunked", id="chunked"),
    ],
)
async def test_answer_larger_than_the_cap_fails(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream, path: str
) -> None:
    tool = make_tool(tmp_path, f"{upstream.url}{path}", max_response_bytes=CAP)

    with pytest.raises(UpstreamError) as info:
        await call(client, tool, {}, request_id())

    assert info.value.code == "upstream_failed"
    assert info.value.__cause__ is None  # the cap tripped; not a transport or decoding failure


async def test_compressed_answer_is_refused_even_when_small_on_the_wire(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream
) -> None:
    # The gateway asks for identity encoding; a backend that compresses anyway could inflate past the cap
    # inside one decoded chunk, so the answer is refused rather than decoded.
    assert len(GZIP_BOMB) < 64 * 1024
    tool = make_tool(tmp_path, f"{upstream.url}/gzip-bomb", max_response_bytes=CAP)
    rid = request_id()

    with pytest.raises(UpstreamError) as info:
        await call(client, tool, {}, rid)

    assert info.value.code == "upstream_failed"
    assert "Content-Encoding" in str(info.value)
    [seen] = upstream.requests(rid)
    assert seen.headers["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/until-close", id="no-framing-read-until-close"),
        pytest.param("/cl-and-chunked", id="small-content-length-beside-chunked"),
        pytest.param("/short", id="content-length-larger-than-body"),
    ],
)
async def test_answer_whose_framing_lies_cannot_exceed_the_cap(
    tmp_path: Path, liar: RawServer, client: HttpUpstream, path: str
) -> None:
    tool = make_tool(tmp_path, f"{liar.url}{path}", max_response_bytes=CAP)

    with pytest.raises(UpstreamError) as info:
        await call(client, tool, {}, request_id())

    assert info.value.code == "upstream_failed"
    assert info.value.__cause__ is None  # the cap tripped; not a transport or decoding failure


async def test_answer_at_exactly_the_cap_is_accepted(tmp_path: Path, upstream: Upstream, client: HttpUpstream) -> None:
    tool = make_tool(tmp_path, f"{upstream.url}/big", max_response_bytes=CAP * 5)

    result = await call(client, tool, {}, request_id())

    assert texts(result) == ["x" * (CAP * 5)]


# --- Bad answers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "cause"),
    [
        pytest.param("/bad-json", json.JSONDecodeError, id="invalid-json-with-json-type"),
        pytest.param("/binary", UnicodeDecodeError, id="not-text"),
        pytest.param("/status/500", type(None), id="http-500"),
        pytest.param("/status/404", type(None), id="http-404"),
        pytest.param("/status/401", type(None), id="http-401"),
    ],
)
async def test_bad_answer_fails_as_upstream_error(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream, path: str, cause: type[BaseException]
) -> None:
    tool = make_tool(tmp_path, f"{upstream.url}{path}")
    rid = request_id()

    with pytest.raises(UpstreamError) as info:
        await call(client, tool, {}, rid)

    assert info.value.code == "upstream_failed"
    assert isinstance(info.value.__cause__, cause)
    assert len(upstream.requests(rid)) == 1


async def test_redirect_is_not_followed_and_is_an_upstream_failure(
    tmp_path: Path, upstream: Upstream, recorder: RawServer, client: HttpUpstream
) -> None:
    # The target is on the allowlist on purpose: it stays unreached because redirects are never followed.
    tool = make_tool(tmp_path, f"{upstream.url}/redirect", allow=(recorder.url,))
    before = recorder.connections
    rid = request_id()

    with pytest.raises(UpstreamError) as info:
        await call(client, tool, {}, rid)

    assert info.value.code == "upstream_failed"
    assert len(upstream.requests(rid)) == 1
    assert recorder.connections == before


# --- Egress ---------------------------------------------------------------------------------------------------


async def test_url_off_the_allowlist_fails_without_connecting(tmp_path: Path, upstream: Upstream) -> None:
    with RawServer() as elsewhere:
        # The catalog was loaded under a wider allowlist than the client's: the client still refuses.
        tool = make_tool(tmp_path, f"{elsewhere.url}/anything")
        http = HttpUpstream(EgressSettings(allow=(upstream.url,)))
        try:
            with pytest.raises(UpstreamError) as info:
                await call(http, tool, {}, request_id())
        finally:
            await http.aclose()

        assert info.value.code == "upstream_failed"
        assert isinstance(info.value.__cause__, EgressDeniedError)
        assert elsewhere.connections == 0


async def test_proxy_environment_variables_are_ignored(
    tmp_path: Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RawServer() as proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        tool = make_tool(tmp_path, f"{upstream.url}/echo/via")
        http = HttpUpstream(EgressSettings(allow=(upstream.url,)))
        rid = request_id()
        try:
            result = await call(http, tool, {}, rid)
        finally:
            await http.aclose()

        assert result.structured_content == {"raw_path": "/echo/via", "method": "GET"}
        assert len(upstream.requests(rid)) == 1
        assert proxy.connections == 0


def test_only_json_media_types_are_parsed_as_json() -> None:
    import httpx

    from mcp_gateway.backends.http import parse_answer

    ndjson = httpx.Response(200, headers={"content-type": "application/x-ndjson"}, content=b'{"a":1}\n{"a":2}\n')
    problem = httpx.Response(200, headers={"content-type": "application/problem+json"}, content=b'{"title":"x"}')
    assert parse_answer("t", ndjson, ndjson.content).structured_content is None
    assert parse_answer("t", problem, problem.content).structured_content == {"title": "x"}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nesting-past-the-stack"),
        pytest.param(b'{"n": ' + b"9" * 5000 + b"}", id="integer-past-the-digit-limit"),
    ],
)
def test_unparseable_json_from_upstream_is_an_upstream_error(body: bytes) -> None:
    import httpx

    from mcp_gateway.backends.http import parse_answer

    response = httpx.Response(200, headers={"content-type": "application/json"}, content=body)
    with pytest.raises(UpstreamError) as info:
        parse_answer("t", response, body)
    assert info.value.code == "upstream_failed"


# --- No state carries from one call to the next ---------------------------------------------------------------


@pytest.mark.parametrize(
    "cookies",
    [
        # one cookie, with the attributes a session cookie carries
        pytest.param(["session=A"], id="bare"),
        pytest.param(["session=A; Path=/"], id="path-root"),
        pytest.param(["session=A; Path=/echo"], id="path-of-the-next-call"),
        pytest.param(["session=A; Domain=127.0.0.1"], id="domain-ip"),
        pytest.param(["session=A; Max-Age=3600"], id="max-age"),
        pytest.param(["session=A; Expires=Wed, 01 Jan 2098 00:00:00 GMT"], id="expires"),
        pytest.param(["session=A; HttpOnly; SameSite=Strict"], id="httponly-samesite"),
        pytest.param(['session="quoted value"; Version=1'], id="rfc2965-quoted"),
        # several at once
        pytest.param(["a=1; Path=/", "b=2; Path=/"], id="two-headers"),
    ],
)
async def test_cookie_set_on_one_call_is_not_sent_on_the_next(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream, cookies: list[str]
) -> None:
    setter = make_tool(tmp_path, f"{upstream.url}/set-cookie", query={"c": "cookies"})
    other = make_tool(tmp_path, f"{upstream.url}/echo/next")
    first, second = request_id(), request_id()

    await call(client, setter, {"cookies": cookies}, first)  # caller A's call
    await call(client, other, {}, second)  # caller B's call, on the same client
    await call(client, setter, {"cookies": []}, request_id())  # and A's own next call

    [seen] = upstream.requests(second)
    assert "cookie" not in seen.headers
    assert all("cookie" not in item.headers for item in upstream.seen if item.headers.get("x-request-id") != first)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=12),
    value=st.text(alphabet=string.ascii_letters + string.digits + "/+=._-", max_size=40),
    attributes=st.lists(
        st.sampled_from(
            ["Path=/", "Path=/echo", "Domain=127.0.0.1", "Max-Age=60", "HttpOnly", "Secure", "SameSite=Lax"]
        ),
        max_size=4,
    ),
)
async def test_no_set_cookie_answer_makes_a_later_call_carry_a_cookie(
    tmp_path: Path, upstream: Upstream, client: HttpUpstream, name: str, value: str, attributes: list[str]
) -> None:
    header = "; ".join([f"{name}={value}", *attributes])
    setter = make_tool(tmp_path, f"{upstream.url}/set-cookie", query={"c": "cookies"})
    other = make_tool(tmp_path, f"{upstream.url}/echo/next")
    later = request_id()

    await call(client, setter, {"cookies": [header]}, request_id())
    await call(client, other, {}, later)

    [seen] = upstream.requests(later)
    assert "cookie" not in seen.headers


# --- The connection pool: waiting for a connection is not the backend timing out ---------------------------


async def _outcomes(http: HttpUpstream, tools: list[ToolSpec]) -> list[BaseException | None]:
    """Call each of ``tools`` at once, in this order (the pool queues waiting requests in arrival order)."""
    outcomes: list[BaseException | None] = [None] * len(tools)

    async def one(index: int, tool: ToolSpec) -> None:
        try:
            await call(http, tool, {}, request_id())
        except UpstreamError as exc:
            outcomes[index] = exc

    async with anyio.create_task_group() as group:
        for index, tool in enumerate(tools):
            group.start_soon(one, index, tool)
    return outcomes


async def test_call_whose_deadline_passes_waiting_for_a_connection_is_a_pool_timeout(
    tmp_path: Path, upstream: Upstream
) -> None:
    # Two connections, five calls to a backend that takes 0.5 s. The first two answer. The next two, with 0.8 s
    # deadlines, get a connection at 0.5 s and the backend is still working at 0.8 s. The last, with a 0.6 s
    # deadline, is still waiting for a connection at 0.6 s.
    http = HttpUpstream(EgressSettings(allow=(upstream.url,), pool_size=2))
    patient = make_tool(tmp_path, f"{upstream.url}/slow/500", timeout=0.8)
    hurried = make_tool(tmp_path, f"{upstream.url}/slow/500", timeout=0.6)
    try:
        outcomes = await _outcomes(http, [patient] * 4 + [hurried])
    finally:
        await http.aclose()

    assert outcomes[:2] == [None, None]
    failures = outcomes[2:]
    assert all(isinstance(failure, UpstreamError) and failure.code == "upstream_failed" for failure in failures)
    first, second, last = failures
    assert isinstance(first, UpstreamTimeoutError)
    assert isinstance(second, UpstreamTimeoutError)
    assert isinstance(last, UpstreamPoolTimeoutError)
    # The two that reached the backend waited for a connection first, and the audit row says for how long.
    for failure in (first, second):
        assert failure.audit_detail["upstream"] == "timeout"
        assert 0.4 <= failure.waited < 0.8
        assert failure.audit_detail["pool_wait_ms"] == round(failure.waited * 1000, 1)
    assert last.audit_detail["upstream"] == "pool_timeout"
    assert 0.55 <= last.waited < 1.5


async def test_calls_that_wait_for_a_connection_within_their_deadline_succeed(
    tmp_path: Path, upstream: Upstream
) -> None:
    http = HttpUpstream(EgressSettings(allow=(upstream.url,), pool_size=1))
    tool = make_tool(tmp_path, f"{upstream.url}/slow/200", timeout=3)
    try:
        outcomes = await _outcomes(http, [tool] * 3)
    finally:
        await http.aclose()

    assert outcomes == [None, None, None]


async def test_pool_size_comes_from_the_egress_settings(tmp_path: Path, upstream: Upstream) -> None:
    # Ten calls of 0.3 s on a pool of ten take one round, not the four a pool of three would.
    http = HttpUpstream(EgressSettings(allow=(upstream.url,), pool_size=10))
    tool = make_tool(tmp_path, f"{upstream.url}/slow/300", timeout=5)
    started = time.monotonic()
    try:
        outcomes = await _outcomes(http, [tool] * 10)
    finally:
        await http.aclose()

    assert outcomes == [None] * 10
    assert time.monotonic() - started < 0.3 * 3


async def test_audit_row_tells_a_pool_timeout_from_a_backend_timeout(
    tmp_path: Path, upstream: Upstream, dev_key: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp_gateway.audit.log import AuditLog
    from mcp_gateway.config import load_settings
    from mcp_gateway.identity import Principal
    from mcp_gateway.server import build_gateway
    from tests.conftest import API_KEY, ExampleApi, make_deployment

    # The shipped catalogs against this upstream, which answers /customers in 0.5 s, over one connection:
    # crm.customer_lookup (2 s) holds it while crm.search (0.3 s) waits for it; then crm.search alone times out
    # at the backend.
    deployment = make_deployment(tmp_path / "d", ExampleApi(upstream.url), dev_key, egress={"pool_size": 1})
    catalog = deployment.root / "catalogs" / "internal.yaml"
    data = yaml.safe_load(catalog.read_text())
    for tool in data["tools"]:
        if tool["name"] in ("crm.customer_lookup", "crm.search"):
            tool["backend"]["timeout"] = 2 if tool["name"] == "crm.customer_lookup" else 0.3
    catalog.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("INVENTORY_API_KEY", API_KEY)
    gateway = build_gateway(load_settings(deployment.config))
    alice = Principal("alice", ("support",), "internal", (), None, "test", 2**40)
    before = len(upstream.seen)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(gateway.call_tool, alice, "crm.customer_lookup", {"customer_id": "c-100"}, "held")
            with anyio.fail_after(5):
                while not any(seen.raw_path.startswith(b"/customers/") for seen in upstream.seen[before:]):
                    await anyio.sleep(0.01)
            await gateway.call_tool(alice, "crm.search", {"query": "ada"}, "waited")
        await gateway.call_tool(alice, "crm.search", {"query": "ada"}, "alone")
    finally:
        await gateway.aclose()
        gateway.audit.close()

    log = AuditLog(f"sqlite:///{deployment.database}")
    rows = {row["request_id"]: row for row in log.iter_rows() if row["event"].startswith("tools/call")}
    log.close()
    outcomes = {rid: rows[rid]["outcome"] for rid in ("held", "waited", "alone")}
    assert outcomes == {"held": "ok", "waited": "upstream_failed", "alone": "upstream_failed"}
    detail = {rid: rows[rid]["detail"] for rid in ("waited", "alone")}
    detail = {rid: value if isinstance(value, dict) else json.loads(value) for rid, value in detail.items()}
    assert detail["waited"]["upstream"] == "pool_timeout"
    assert detail["alone"]["upstream"] == "timeout"
    assert detail["alone"]["pool_wait_ms"] < 100 <= detail["waited"]["pool_wait_ms"]
